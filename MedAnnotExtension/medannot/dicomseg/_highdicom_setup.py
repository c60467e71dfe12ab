"""Make highdicom's first use in a process cheaper, without changing what it checks or writes.

highdicom 0.28 checks every SEG and SR it builds against tables of the DICOM standard that it parses from JSON on
first use (``highdicom/_standard``: 23 MB, about 100 000 small dicts). Two things make that first use slow, and
both are dealt with here:

* Python's cyclic garbage collector runs again and again while those dicts are created (each collection walks
  everything created so far), which makes the parse 2 to 4 times slower than the parse itself. The tables hold
  no reference cycles, so they are parsed with the collector paused (:func:`medannot._gc.paused_gc`), by
  highdicom's own cached loaders: highdicom then uses exactly the tables it would have loaded itself.
* ``is_attribute_in_iod`` scans every attribute of every module of an IOD; highdicom calls it (through
  ``is_multiframe_image``) once per source image, 300 scans of the same CT IOD for a 300-slice series. Its answer
  depends only on its arguments and the fixed tables, so :func:`prepare_highdicom` remembers the answers. The
  checks that use it run as before and give the same results (a test compares them with highdicom's own).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence

from medannot._gc import paused_gc

logger = logging.getLogger(__name__)

_EXPECTED_PARAMETERS = ["attribute", "sop_class_uid", "exclude_path_elements"]


def _memoized(lookup: Callable[..., bool]) -> Callable[..., bool]:
    @functools.lru_cache(maxsize=4096)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return lookup(attribute, sop_class_uid, list(exclude) if exclude is not None else None)

    @functools.wraps(lookup)
    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
        return cached(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.medannot_memoized = True  # type: ignore[attr-defined]
    return is_attribute_in_iod


def prepare_highdicom() -> None:
    """Load highdicom's tables of the standard (collector paused) and remember its IOD attribute look-ups.

    Idempotent and cheap after the first call. When a highdicom version lacks these functions or changed their
    signature, nothing is changed and highdicom simply does its own, slower, first use.
    """
    try:
        from highdicom import _standard_utils as standard
    except ImportError:  # pragma: no cover - a highdicom without the module: nothing to prepare
        return
    loaders = [getattr(standard, name, None) for name in
               ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map")]
    with paused_gc():
        for loader in loaders:
            if callable(loader):
                loader()
    lookup = getattr(standard, "is_attribute_in_iod", None)
    if lookup is None or getattr(lookup, "medannot_memoized", False):
        return
    try:
        parameters = list(inspect.signature(lookup).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return
    if parameters != _EXPECTED_PARAMETERS:
        logger.debug("highdicom's is_attribute_in_iod takes %s; its look-ups are not memoized", parameters)
        return
    # Only the module's own global is replaced: is_multiframe_image and does_iod_have_pixel_data look it up there
    # on every call; modules that imported the function by name keep highdicom's (they call it rarely).
    standard.is_attribute_in_iod = _memoized(lookup)
