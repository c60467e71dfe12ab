"""Start a call in a thread now, take its result later: for work that releases the GIL (SimpleITK reading a file),
so that it runs on another core. ``medannot seg export`` reads its label map this way while it imports highdicom.

``value()`` returns what the call returned or raises what it raised, at the point where the caller asks: errors
surface in the same order as if the calls had been made one after the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
