"""Requests to the task server on a worker thread, their outcomes handed back on the thread that polls.

A GUI (3D Slicer's, whose Python has no asyncio loop tied to Qt) must not wait on the network: it starts a call
with :meth:`BackgroundCalls.submit` and polls :meth:`BackgroundCalls.poll` from a timer; the callbacks then run on
the GUI's thread, the only one allowed to touch its scene and widgets. The worker runs only what it is given
(network and file work), one call at a time, so two requests never share the client's connections at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Transfer:
    """How far a download on the worker has come, readable from any thread, and the reader's wish to cancel it.

    The worker calls :meth:`report` (as ``progress`` of :meth:`TaskServerClient.download_instances`) and asks
    :meth:`is_cancelled` (as its ``cancelled``); the GUI reads :attr:`received` / :attr:`total` and calls
    :meth:`cancel`.
    """

    what: str
    received: int = 0
    total: int | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def report(self, received: int, total: int | None) -> None:
        self.received, self.total = int(received), total

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def percent(self) -> int | None:
        """0-100, or None while the size is unknown."""
        if not self.total:
            return None
        return max(0, min(100, round(100 * self.received / self.total)))


@dataclass
class _Call:
    what: str
    future: Future
    on_success: Callable[[Any], None] | None
    on_failure: Callable[[BaseException], None] | None


class BackgroundCalls:
    """One worker thread for calls that wait on the network, and the callbacks they hand their outcome to.

    Examples
    --------
    >>> calls = BackgroundCalls()
    >>> calls.submit("add", lambda a, b: a + b, 1, 2, on_success=print)  # doctest: +SKIP
    >>> calls.wait()                       # a GUI polls calls.poll() from a timer instead   # doctest: +SKIP
    3
    """

    def __init__(self, name: str = "medannot-network") -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._calls: list[_Call] = []

    def submit(self, what: str, function: Callable[..., Any], *args: Any,
               on_success: Callable[[Any], None] | None = None,
               on_failure: Callable[[BaseException], None] | None = None, **kwargs: Any) -> Future:
        """Run ``function(*args, **kwargs)`` on the worker; :meth:`poll` later calls ``on_success(result)`` or
        ``on_failure(error)`` (without ``on_failure`` the error is logged). ``what`` names the call in logs and in
        :meth:`running`."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        future = self._executor.submit(function, *args, **kwargs)
        self._calls.append(_Call(what, future, on_success, on_failure))
        return future

    def running(self) -> list[str]:
        """What is still waiting or running, or finished but not yet handed back by :meth:`poll`."""
        return [call.what for call in self._calls]

    def is_busy(self, what: str | None = None) -> bool:
        return any(what is None or call.what == what for call in self._calls)

    def poll(self) -> int:
        """Hand every finished call's outcome to its callback, on this thread, in the order they were submitted;
        returns how many calls are still unfinished. A callback that raises is logged; the others still run."""
        while self._calls and self._calls[0].future.done():
            call = self._calls.pop(0)
            error = call.future.exception()
            try:
                if error is None:
                    if call.on_success is not None:
                        call.on_success(call.future.result())
                elif call.on_failure is not None:
                    call.on_failure(error)
                else:
                    logger.warning("%s failed: %s", call.what, error)
            except Exception:
                logger.exception("Handling the outcome of %s failed", call.what)
        return len(self._calls)

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> int:
        """Poll until every call is handed back or ``timeout`` seconds passed (for scripts and tests; a GUI polls
        from a timer); returns how many calls are still unfinished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
        return len(self._calls)

    def shutdown(self) -> None:
        """Stop taking calls; a call already running finishes on its own, its outcome is dropped."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._calls.clear()
