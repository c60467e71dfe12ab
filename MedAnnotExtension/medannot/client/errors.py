"""The failures of talking to a task server and of the local outbox, as people can act on them.

Every message names the server (or folder) and says what to do; the CLI prints it as one line.
"""

from __future__ import annotations

from medannot.errors import MedAnnotError


class TaskServerError(MedAnnotError):
    """Base class of every failure talking to a MedAnnot task server."""

    def __init__(self, message: str, *, server_url: str = "", status_code: int | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.server_url = server_url
        self.status_code = status_code
        self.detail = detail


class ServerAddressError(TaskServerError):
    """The server address is not an http(s) URL."""


class ServerUnreachableError(TaskServerError):
    """No answer (refused, timed out, connection cut) or a temporary 5xx/408/429 after all retries."""


class AuthenticationError(TaskServerError):
    """Wrong username or password, not logged in, or the session token expired or was revoked (401)."""


class ServerRejectedError(TaskServerError):
    """The server understood the request and refused it (4xx); ``detail`` holds its reason."""


class LeaseLostError(ServerRejectedError):
    """The task's lease expired or went to someone else (409); the task must be claimed again."""


class ServerResponseError(TaskServerError):
    """The server answered something a MedAnnot task server does not send (wrong URL, broken proxy)."""


class UnsafeArchiveError(ServerResponseError):
    """A downloaded zip holds a path outside the destination folder (``../``, absolute, link)."""


class TransferCancelledError(TaskServerError):
    """The reader cancelled a download; nothing of it was kept."""


class OutboxError(MedAnnotError):
    """The local outbox folder cannot be written or holds an unreadable item."""
