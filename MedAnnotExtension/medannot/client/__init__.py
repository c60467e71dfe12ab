"""Talking to the lab's task server: the REST client, the login session file and the local outbox.

Names are imported on first use so that ``medannot --help`` does not pay for loading ``requests``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "medannot.client.api": ("Session", "Submission", "Task", "TaskServerClient", "clear_session", "extract_zip",
                            "load_session", "medannot_home", "save_session"),
    "medannot.client.errors": ("AuthenticationError", "LeaseLostError", "OutboxError", "ServerAddressError",
                               "ServerRejectedError", "ServerResponseError", "ServerUnreachableError",
                               "TaskServerError", "TransferCancelledError", "UnsafeArchiveError"),
    "medannot.client.background": ("BackgroundCalls", "Transfer"),
    "medannot.client.outbox": ("DeliveryResult", "Outbox", "OutboxItem", "default_outbox_folder"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AuthenticationError", "BackgroundCalls", "DeliveryResult", "LeaseLostError", "Outbox", "OutboxError",
    "OutboxItem", "ServerAddressError", "ServerRejectedError", "ServerResponseError", "ServerUnreachableError",
    "Session", "Submission", "Task", "TaskServerClient", "TaskServerError", "Transfer", "TransferCancelledError",
    "UnsafeArchiveError", "clear_session", "default_outbox_folder", "extract_zip", "load_session", "medannot_home",
    "save_session",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
