"""Make highdicom's first use in a process cheaper, without changing what it checks or writes.

highdicom 0.28 checks every SEG and SR it builds against tables of the DICOM standard that it parses from JSON on
first use (``highdicom/_standard``; ``module_attribute_map.json`` alone is 23 MB, about 100 000 small dicts, for
the 436 modules of the standard). Three things make that first use slow, and all are dealt with here:

* Python's cyclic garbage collector runs again and again while those dicts are created (each collection walks
  everything created so far), which makes the parse 2 to 4 times slower than the parse itself. The tables hold
  no reference cycles, so they are parsed with the collector paused (:func:`medannot._gc.paused_gc`).
* A SEG and its SR use a few dozen of the 436 modules. MedAnnot replaces highdicom's private loader
  ``get_module_attribute_map`` (in the three highdicom modules that hold it) by one that returns a
  :class:`LazyModuleTable`: a mapping that parses a module's entry from highdicom's own file the first time
  highdicom asks for that module. highdicom's checks are not touched and read exactly what they would have read
  from the whole parse (a test compares all 436 entries).
* ``is_attribute_in_iod`` scans every attribute of every module of an IOD; highdicom calls it (through
  ``is_multiframe_image``) once per source image, 300 scans of the same CT IOD for a 300-slice series. Its answer
  depends only on its arguments and the fixed tables, so MedAnnot replaces ``highdicom._standard_utils.
  is_attribute_in_iod`` by a wrapper that remembers highdicom's answers. The checks that use it run as before
  and give the same results (a test compares them with highdicom's own).

Both replacements are made once, by :func:`prepare_highdicom`, only when highdicom's functions look as expected
(highdicom 0.28); otherwise highdicom is left as it is and simply does its own, slower, first use.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import logging
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from medannot._gc import paused_gc

logger = logging.getLogger(__name__)

_EXPECTED_PARAMETERS = ["attribute", "sop_class_uid", "exclude_path_elements"]
_MODULE_TABLE = "_standard/module_attribute_map.json"
# Modules of highdicom that bound get_module_attribute_map by name when they were imported (highdicom 0.28).
_MODULE_TABLE_USERS = ("highdicom._standard_utils", "highdicom.base", "highdicom.image")
_KEY_LINE = b'\n  "'  # a top-level key of the indented JSON object: the only lines indented by exactly two spaces


class LazyModuleTable(Mapping[str, list[dict[str, Any]]]):
    """highdicom's ``module_attribute_map.json`` (module key -> attribute entries), one module parsed when asked.

    ``data`` is the file's bytes as highdicom itself reads them. Keys keep the file's order. If a module's entry
    does not parse, the whole file is parsed as highdicom would and used from then on.
    """

    def __init__(self, data: bytes | TableFile, spans: dict[str, tuple[int, int]]) -> None:
        self._data = data
        self._spans = spans
        self._parsed: dict[str, list[dict[str, Any]]] = {}
        self._whole: dict[str, list[dict[str, Any]]] | None = None

    @classmethod
    def index(cls, data: bytes) -> LazyModuleTable | None:
        """Find each module's entry in the indented file; ``None`` when the file is not laid out as expected."""
        spans = _module_spans(data)
        return cls(data, spans) if spans else None

    def __getitem__(self, key: str) -> list[dict[str, Any]]:
        if self._whole is not None:
            return self._whole[key]
        value = self._parsed.get(key)
        if value is None:
            start, end = self._spans[key]  # KeyError for an unknown module, as from the parsed dict
            try:
                value = json.loads(self._data[start:end])
            except ValueError:
                logger.debug("module %r of highdicom's table did not parse alone; parsing the whole table", key)
                self._whole = json.loads(self._data[:])  # [:]: the whole file also from a TableFile
                return self._whole[key]
            self._parsed[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._spans

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)


class TableFile:
    """highdicom's table file read a slice at a time (``[start:end]``, ``[:]`` for all of it), for a table indexed
    elsewhere (:func:`module_table_index`): the 23 MB are not read to parse the few modules a SEG and SR need."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getitem__(self, span: slice) -> bytes:
        with open(self.path, "rb") as fp:
            start = span.start or 0
            fp.seek(start)
            return fp.read() if span.stop is None else fp.read(span.stop - start)


def module_table_index() -> tuple[str, int, int, dict[str, tuple[int, int]]] | None:
    """Path, size, modification time and module spans of highdicom's table, found without importing highdicom.

    For a helper process: indexing the 23 MB file takes about 25 ms of scanning, which the process exporting a SEG
    then need not do (:func:`prepare_highdicom` takes the result). ``None`` when the file is not found as a plain
    file or not laid out as expected.
    """
    spec = importlib.util.find_spec("highdicom")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], *_MODULE_TABLE.split("/"))
    try:
        with open(path, "rb") as fp:
            stat = os.fstat(fp.fileno())
            data = fp.read()
    except OSError:
        return None
    spans = _module_spans(data)
    return (path, stat.st_size, stat.st_mtime_ns, spans) if spans else None


def _module_spans(data: bytes) -> dict[str, tuple[int, int]] | None:
    """Where each module's entry lies in the indented file; ``None`` when it is not laid out as expected."""
    if not data.startswith(b'{' + _KEY_LINE) or not data.rstrip().endswith(b"}"):
        return None
    starts: list[int] = []
    position = data.find(_KEY_LINE)
    while position != -1:
        starts.append(position + 3)
        position = data.find(_KEY_LINE, position + len(_KEY_LINE))
    spans: dict[str, tuple[int, int]] = {}
    ends = [start - 3 for start in starts[1:]] + [data.rstrip().rfind(b"}")]
    for start, end in zip(starts, ends):
        close = data.find(b'": ', start + 1)
        key = data[start + 1:close]
        if close == -1 or close > end or b"\\" in key or b'"' in key or data[close + 3:close + 4] != b"[":
            return None
        value_end = data.rfind(b"]", close, end) + 1
        if value_end == 0:
            return None
        spans[key.decode("utf-8")] = (close + 3, value_end)
    return spans or None


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


def _install_lazy_module_table(standard: Any, index: tuple[str, int, int, dict[str, tuple[int, int]]] | None
                                ) -> None:
    loader = getattr(standard, "get_module_attribute_map", None)
    cache_info = getattr(loader, "cache_info", None)
    if loader is None or getattr(loader, "medannot_lazy", False) or cache_info is None or cache_info().currsize:
        return  # already ours, or highdicom has parsed its table already
    table = _table_of(index)
    if table is None:
        data = pkgutil.get_data("highdicom", _MODULE_TABLE)
        table = LazyModuleTable.index(data) if data else None
    if table is None:
        logger.debug("highdicom's %s is not laid out as expected; highdicom parses it whole", _MODULE_TABLE)
        return

    @functools.wraps(loader)
    def get_module_attribute_map() -> Mapping[str, list[dict[str, Any]]]:
        return table

    get_module_attribute_map.medannot_lazy = True  # type: ignore[attr-defined]
    users = [importlib.import_module(name) for name in _MODULE_TABLE_USERS]
    for module in users:
        if getattr(module, "get_module_attribute_map", None) is loader:
            module.get_module_attribute_map = get_module_attribute_map


def _table_of(index: tuple[str, int, int, dict[str, tuple[int, int]]] | None) -> LazyModuleTable | None:
    """The table of an index made by :func:`module_table_index`, if it is of the file highdicom reads, unchanged."""
    if index is None:
        return None
    import highdicom

    path, size, mtime_ns, spans = index
    expected = os.path.join(os.path.dirname(highdicom.__file__ or ""), *_MODULE_TABLE.split("/"))
    try:
        stat = os.stat(expected)
    except OSError:
        return None
    if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns) or os.path.realpath(path) != os.path.realpath(expected):
        return None
    return LazyModuleTable(TableFile(path), spans)


def prepare_highdicom(index: tuple[str, int, int, dict[str, tuple[int, int]]] | None = None) -> None:
    """Load highdicom's tables of the standard (collector paused, modules on demand) and remember its IOD look-ups.

    ``index``: :func:`module_table_index`'s answer, from a helper process, to use instead of indexing the table
    here. Idempotent and cheap after the first call. When a highdicom version lacks these functions or changed their
    signature, nothing is changed and highdicom simply does its own, slower, first use.
    """
    try:
        from highdicom import _standard_utils as standard
    except ImportError:  # pragma: no cover - a highdicom without the module: nothing to prepare
        return
    with paused_gc():
        _install_lazy_module_table(standard, index)
        for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
            loader = getattr(standard, name, None)
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
