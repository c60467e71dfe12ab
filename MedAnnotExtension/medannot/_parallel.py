"""Start calls now, take their results later, so that they run on another core: in a thread (:class:`InThread`, for
work that releases the GIL, such as SimpleITK reading a file) or in a forked child process (:class:`InChildProcess`,
for pure-Python work such as imports and parsing).

``value()`` returns what a call returned or raises what it raised, at the point where the caller asks: errors
surface in the same order as if the calls had been made one after the other.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class InThread(threading.Thread):
    """Run ``function(*args)`` in a thread; :meth:`value` waits and returns its result or raises its error."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        super().__init__(name=f"medannot-{getattr(function, '__name__', 'call')}")
        self._call = (function, args)
        self._result: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        function, args = self._call
        try:
            self._result = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by value()
            self._error = exc

    def value(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._result


class InChildProcess:
    """Run independent calls, in order, in a forked child process on another core; take their results later.

    For the pure-Python work of a short command that would otherwise wait in line for the interpreter lock: a
    thread cannot run it in parallel, a forked process can. ``medannot seg export`` loads the guideline (importing
    its schema validator), indexes highdicom's table of the standard and reads the label map (importing SimpleITK)
    this way while it imports pydicom and highdicom and reads the source headers.

    Each call's result is pickled back through a pipe, except NumPy arrays in a result tuple, which are written to
    shared memory and mapped by the parent (copy-on-write) rather than copied. :meth:`value` returns a call's result
    or raises its error, at the point where the caller asks, so errors surface in the same order as if the calls
    had been made one after the other. Where the child cannot be used (no ``fork`` or ``memfd_create``: not
    Linux; the child died; a result does not pickle), the call runs in the caller when its value is asked for.

    Fork before starting any thread, and :meth:`close` when done (it ends the child if it still runs).
    """

    def __init__(self, calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        self._calls = calls
        self._done: dict[str, tuple[bool, Any]] = {}
        self._here: set[str] = set()  # calls the child could not send back
        self._pid = 0
        self._pipe: Any = None
        self._memory = -1
        if not (hasattr(os, "fork") and hasattr(os, "memfd_create")) or threading.active_count() > 1:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered is written twice
        self._memory = os.memfd_create("medannot-prefetch")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            code = 1
            try:
                with os.fdopen(write_end, "wb") as pipe:
                    _serve(calls, pipe, self._memory)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self._pid = pid
        self._pipe = os.fdopen(read_end, "rb")

    @property
    def running(self) -> bool:
        """Whether the calls run in a child process (``False``: each runs here when its value is asked for)."""
        return self._pid != 0 or self._pipe is not None

    def value(self, name: str) -> Any:
        """The result of call ``name``, or its error raised here."""
        while name not in self._done and name not in self._here and self._pipe is not None:
            try:
                received, ok, result = pickle.load(self._pipe)
            except Exception:  # noqa: BLE001 - the child is gone or sent what cannot be read: the rest is done here
                self._stop()
                break
            if ok is None:
                self._here.add(received)  # the child could not send this one: done here
            else:
                self._done[received] = (ok, _mapped(result, self._memory) if ok else result)
        if name not in self._done:
            function, args = self._calls[name]
            try:
                self._done[name] = (True, function(*args))
            except Exception as exc:  # noqa: BLE001 - raised below, as for a result from the child
                self._done[name] = (False, exc)
        ok, result = self._done[name]
        if not ok:
            raise result
        return result

    def close(self) -> None:
        """End the child if it still runs (its remaining results are not needed)."""
        self._stop()
        if self._memory >= 0:
            os.close(self._memory)  # mapped arrays keep their own mapping
            self._memory = -1

    def _stop(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self._pid, 0)
            self._pid = 0


class KeepInChild:
    """A part of a call's result that only keeps something alive until the result's arrays are shared (such as the
    SimpleITK image an array views); the parent receives ``None`` in its place."""

    def __init__(self, kept: object) -> None:
        self.kept = kept


@dataclass(frozen=True)
class _SharedArray:
    offset: int
    shape: tuple[int, ...]
    dtype: str


def _serve(calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]], pipe: Any, memory: int) -> None:
    import numpy as np

    offset = 0
    for name, (function, args) in calls.items():
        try:
            result, ok = function(*args), True
        except Exception as exc:  # noqa: BLE001 - the parent raises it
            result, ok = exc, False
        if ok and isinstance(result, tuple):
            shared = []
            for part in result:
                if isinstance(part, np.ndarray) and part.dtype.kind in "biuf" and part.size:
                    data = np.ascontiguousarray(part)
                    os.ftruncate(memory, offset + data.nbytes)
                    written = os.pwrite(memory, memoryview(data).cast("B"), offset)
                    while written < data.nbytes:
                        written += os.pwrite(memory, memoryview(data).cast("B")[written:], offset + written)
                    part = _SharedArray(offset, data.shape, data.dtype.str)
                    offset += -(-data.nbytes // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
                shared.append(None if isinstance(part, KeepInChild) else part)
            result = tuple(shared)
        try:
            message = pickle.dumps((name, ok, result), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - e.g. an error that does not pickle: the parent does this call itself
            message = pickle.dumps((name, None, None), protocol=pickle.HIGHEST_PROTOCOL)
        pipe.write(message)
        pipe.flush()


def _mapped(result: Any, memory: int) -> Any:
    if not isinstance(result, tuple) or not any(isinstance(part, _SharedArray) for part in result):
        return result
    import numpy as np

    parts = []
    for part in result:
        if isinstance(part, _SharedArray):
            dtype = np.dtype(part.dtype)
            size = int(np.prod(part.shape)) * dtype.itemsize
            # MAP_POPULATE: the pages are mapped in one call, not one fault at a time when first read
            flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
            view = mmap.mmap(memory, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=part.offset)
            part = np.frombuffer(view, dtype=dtype).reshape(part.shape)  # writeable: copy-on-write pages
        parts.append(part)
    return tuple(parts)
