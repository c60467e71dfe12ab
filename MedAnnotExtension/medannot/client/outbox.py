"""The local outbox: a submit that cannot reach the server waits on disk and is delivered exactly once later.

Layout of the outbox folder (nothing in it is ever deleted)::

    pending/<item>/   seg.dcm, sr.dcm, manifest.json   waiting for delivery
    sent/<item>/      ... and the server's submission id
    rejected/<item>/  ... and the server's reason (4xx): not retried
    staging/          items being written; only a complete item is renamed into pending/
    locks/<item>.lock held by the process delivering the item

Each item keeps the Idempotency-Key generated when it was queued, so a delivery whose answer was lost and is
sent again is stored once by the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from medannot.client.api import TaskServerClient, medannot_home
from medannot.client.errors import (
    AuthenticationError,
    OutboxError,
    ServerRejectedError,
    ServerResponseError,
    ServerUnreachableError,
)
from medannot.errors import DicomSegError

logger = logging.getLogger(__name__)

State = Literal["pending", "sent", "rejected"]
STATES: tuple[State, ...] = ("pending", "sent", "rejected")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def default_outbox_folder() -> Path:
    """``MEDANNOT_OUTBOX``, else ``outbox`` in the MedAnnot home folder (``MEDANNOT_HOME`` or ``~/.medannot``)."""
    configured = os.environ.get("MEDANNOT_OUTBOX")
    return Path(configured) if configured else medannot_home() / "outbox"


@dataclass(frozen=True)
class OutboxItem:
    """One queued, sent or rejected submit as recorded in its manifest."""

    item_id: str
    state: State
    path: Path
    manifest: dict[str, Any]

    @property
    def task_id(self) -> int | str:
        task_id: int | str = self.manifest["task_id"]
        return task_id

    @property
    def seg_path(self) -> Path:
        return self.path / str(self.manifest["seg"]["file"])

    @property
    def sr_path(self) -> Path:
        return self.path / str(self.manifest["sr"]["file"])


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one submit: ``sent`` (with the server's id), ``queued`` (with why) or ``rejected``."""

    item_id: str
    task_id: int | str
    status: State | Literal["queued"]
    path: Path
    submission_id: int | str | None = None
    detail: str | None = None


class Outbox:
    """A folder of submits waiting for, or done with, delivery to a task server.

    Parameters
    ----------
    folder
        Where the items live; default :func:`default_outbox_folder`.

    Examples
    --------
    >>> outbox = Outbox()                                                    # doctest: +SKIP
    >>> outbox.submit(client, task.task_id, task.lease_token, seg, sr)      # doctest: +SKIP
    DeliveryResult(..., status='queued', detail='cannot reach the task server ...')
    >>> outbox.flush(client)                                                 # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_outbox_folder()
        try:
            # The manifests hold lease tokens: keep the folder to this user.
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            for sub in (*STATES, "staging", "locks"):
                (self.folder / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot use {self.folder} as the outbox ({exc.strerror}); set MEDANNOT_OUTBOX "
                              "to a folder you can write") from None

    # ------------------------------------------------------------ queue and deliver
    def submit(self, client: TaskServerClient, task_id: int | str, lease_token: str,
               seg_path: str | os.PathLike[str], sr_path: str | os.PathLike[str]) -> DeliveryResult:
        """Keep a copy of the SEG and SR in the outbox, then try to deliver it once now."""
        item = self.add(client.base_url, task_id, lease_token, seg_path, sr_path, reader=client.username)
        return self._deliver(client, item.item_id)[0]

    def add(self, server_url: str, task_id: int | str, lease_token: str, seg_path: str | os.PathLike[str],
            sr_path: str | os.PathLike[str], reader: str | None = None) -> OutboxItem:
        """Queue a submit without sending it: the item appears in ``pending/`` complete or not at all.

        ``reader`` (the username that holds the lease) keeps the item for that reader: on a shared workstation
        another reader's login does not send it (the server would refuse it for good)."""
        sources = {"seg": Path(seg_path), "sr": Path(sr_path)}
        for path in sources.values():
            if not path.is_file():
                raise DicomSegError(f"{path}: no such file to submit for task {task_id}")
        now = datetime.now(timezone.utc)
        item_id = f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
        staging = self.folder / "staging" / item_id
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION, "item_id": item_id, "task_id": task_id, "lease_token": lease_token,
            "server_url": server_url, "reader": reader, "idempotency_key": str(uuid.uuid4()),
            "created": now.isoformat(),
            "attempts": 0, "last_attempt": None, "last_error": None, "state": "pending",
            "submission_id": None, "detail": None, "status_code": None, "finished": None,
        }
        try:
            staging.mkdir()
            for role, source in sources.items():
                name = f"{role}.dcm"
                manifest[role] = {"file": name, "original": str(source.resolve()),
                                  "sha256": _copy_synced(source, staging / name)}
            _write_json(staging / MANIFEST, manifest)
            _fsync_dir(staging)
            os.rename(staging, self.folder / "pending" / item_id)
            _fsync_dir(self.folder / "pending")
        except OSError as exc:
            raise OutboxError(f"could not queue task {task_id}'s SEG and SR in {self.folder} ({exc}); free disk "
                              "space or set MEDANNOT_OUTBOX to a writable folder, then submit again") from None
        logger.info("queued task %s as outbox item %s", task_id, item_id)
        return self._item("pending", item_id)

    def flush(self, client: TaskServerClient) -> list[DeliveryResult]:
        """Deliver every pending item, oldest first; once the server is unreachable the rest wait untried."""
        results: list[DeliveryResult] = []
        give_up: str | None = None
        for item in self.pending():
            if give_up is not None and item.manifest.get("server_url") == client.base_url:
                results.append(self._result(item, "queued", detail=give_up))
                continue
            result, server_down = self._deliver(client, item.item_id)
            results.append(result)
            if server_down:
                give_up = f"not tried: {result.detail}"
        return results

    # ------------------------------------------------------------ listing
    def items(self, state: State | None = None) -> list[OutboxItem]:
        """Items in ``state`` (all when ``None``), oldest first."""
        found = []
        for folder_state in STATES if state is None else (state,):
            for path in (self.folder / folder_state).iterdir():
                if path.name.startswith("."):
                    continue
                try:
                    found.append(self._item(folder_state, path.name))
                except OutboxError:
                    if path.exists():  # else another process just moved it on
                        raise
        return sorted(found, key=lambda item: item.item_id)

    def pending(self) -> list[OutboxItem]:
        return self.items("pending")

    def sent(self) -> list[OutboxItem]:
        return self.items("sent")

    def rejected(self) -> list[OutboxItem]:
        return self.items("rejected")

    # ------------------------------------------------------------ internals
    def _deliver(self, client: TaskServerClient, item_id: str) -> tuple[DeliveryResult, bool]:
        """Deliver one pending item under its lock; the flag says the failure will hit every other item too."""
        with self._lock(item_id):
            # Another process may have delivered it while we waited for the lock: report its outcome.
            for state in ("sent", "rejected"):
                if (self.folder / state / item_id).is_dir():
                    done = self._item(state, item_id)
                    return self._result(done, state, submission_id=done.manifest.get("submission_id"),
                                        detail=done.manifest.get("detail")), False
            item = self._item("pending", item_id)
            manifest = dict(item.manifest)
            if manifest.get("server_url") != client.base_url:
                return self._result(item, "queued", detail=f"queued for {manifest.get('server_url')}; log in "
                                    "there to deliver it"), False
            owner = manifest.get("reader")
            if owner and client.username and owner != client.username:
                return self._result(item, "queued", detail=f"queued for reader {owner}; it is sent when {owner} "
                                    "logs in"), False
            manifest["attempts"] = int(manifest.get("attempts") or 0) + 1
            manifest["last_attempt"] = _now()
            self._save(item, manifest)
            try:
                submission = client.submit(item.task_id, manifest["lease_token"], item.seg_path, item.sr_path,
                                           idempotency_key=manifest["idempotency_key"])
            except (ServerUnreachableError, AuthenticationError, ServerResponseError) as exc:
                # The server may not have it, or may have it and its answer got lost: keep it, same key next time.
                manifest["last_error"] = str(exc)
                self._save(item, manifest)
                logger.warning("task %s stays in the outbox: %s", item.task_id, exc)
                return self._result(item, "queued", detail=str(exc)), True
            except ServerRejectedError as exc:
                manifest.update(state="rejected", detail=exc.detail or str(exc), status_code=exc.status_code,
                                last_error=str(exc), finished=_now())
                moved = self._move(item, manifest, "rejected")
                logger.error("task %s was rejected by %s: %s", item.task_id, client.base_url, exc)
                return self._result(moved, "rejected", detail=manifest["detail"]), False
            except DicomSegError as exc:
                raise OutboxError(f"outbox item {item.path} lost its files ({exc}); it cannot be sent") from None
            manifest.update(state="sent", submission_id=submission.submission_id, last_error=None, finished=_now(),
                            response=submission.raw)
            moved = self._move(item, manifest, "sent")
            logger.info("delivered task %s as submission %s", item.task_id, submission.submission_id)
            return self._result(moved, "sent", submission_id=submission.submission_id), False

    @contextlib.contextmanager
    def _lock(self, item_id: str) -> Iterator[None]:
        fd = os.open(self.folder / "locks" / f"{item_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock_file(fd)
            try:
                yield
            finally:
                _unlock_file(fd)
        finally:
            os.close(fd)

    def _item(self, state: State, item_id: str) -> OutboxItem:
        path = self.folder / state / item_id
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutboxError(f"outbox item {path} has no readable {MANIFEST} ({exc}); move the folder out of "
                              f"{self.folder / state} and submit its files again") from None
        return OutboxItem(item_id=item_id, state=state, path=path, manifest=manifest)

    def _save(self, item: OutboxItem, manifest: dict[str, Any]) -> None:
        try:
            _write_json(item.path / MANIFEST, manifest)
        except OSError as exc:
            raise OutboxError(f"could not update {item.path / MANIFEST} ({exc})") from None

    def _move(self, item: OutboxItem, manifest: dict[str, Any], state: State) -> OutboxItem:
        # Record the outcome first: a crash before the rename leaves a pending item whose re-delivery the server
        # answers from its Idempotency-Key, so nothing is stored twice.
        self._save(item, manifest)
        target = self.folder / state / item.item_id
        try:
            os.rename(item.path, target)
            _fsync_dir(self.folder / state)
        except OSError as exc:
            raise OutboxError(f"could not move {item.path} to {target} ({exc})") from None
        return OutboxItem(item_id=item.item_id, state=state, path=target, manifest=manifest)

    @staticmethod
    def _result(item: OutboxItem, status: State | Literal["queued"], submission_id: int | str | None = None,
                detail: str | None = None) -> DeliveryResult:
        return DeliveryResult(item_id=item.item_id, task_id=item.task_id, status=status, path=item.path,
                              submission_id=submission_id, detail=detail)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _copy_synced(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, default=str)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory; NTFS journals the rename itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if sys.platform == "win32":  # pragma: no cover - Slicer's other home; msvcrt has no blocking whole-file lock
    import msvcrt
    import time

    def _lock_file(fd: int) -> None:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                time.sleep(0.1)

    def _unlock_file(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock_file(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock_file(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
