"""Pause Python's cyclic garbage collector around allocation-heavy work (DICOM-SEG export).

Kept free of heavy imports so that the command line can pause the collector before it imports numpy, pydicom and
highdicom (imports create many objects too).
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block (reference counting still frees memory).

    Building and writing a SEG creates hundreds of thousands of short-lived pydicom and highdicom objects; with
    the collector on, its repeated collections cost more time than the objects themselves. Whatever cyclic
    garbage the block leaves is collected after it, when the collector is on again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def with_paused_gc(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` with the collector paused (see :func:`paused_gc`)."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with paused_gc():
            return func(*args, **kwargs)

    return wrapper


def keep_until_exit() -> None:
    """Tell the collector that every object alive now lives until the process ends (``gc.freeze``).

    For a command line run that is about to exit: what a SEG export leaves alive (highdicom's tables of the
    standard, about a million objects, and the modules) would otherwise be walked by each collection the
    interpreter runs while it shuts down, which costs more time than the export's own collections.
    """
    gc.freeze()
