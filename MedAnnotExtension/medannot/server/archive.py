"""Final results into the lab's PACS: a server-side outbox of SEG/SR files, sent with STOW-RS, and the WADO-RS
read-back that proves a send.

A file counts as sent only when the archive's STOW response lists its SOP Instance UID and the instance read back
from the archive is byte for byte the stored file. Until then it stays in the outbox (a database table, so nothing
is lost across a restart) and is retried with a growing delay; the last error is kept for the dashboard and
``medannot admin archive list``. Credentials come from the server's environment only, never from the database or
the API.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO
from typing import Any

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.db import transaction
from medannot.server.models import ArchiveSend, Project, Review, Signature, Submission, utcnow
from medannot.server.storage import ObjectStore

logger = logging.getLogger(__name__)

PENDING, SENT, SUPERSEDED = "pending", "sent", "superseded"  # superseded: queued for an archive no longer named
IN_FLIGHT = timedelta(minutes=2)  # a row being sent is not picked up by another worker for this long
MAX_DELAY_S = 600.0


class ArchiveError(MedAnnotError):
    """The archive did not take a file (down, refused, or what it holds differs from what was sent)."""


@dataclass(frozen=True)
class ArchiveCredentials:
    """Basic-auth credentials and timeout for the results archive, read from the server's environment:
    ``MEDANNOT_RESULTS_DICOMWEB_USER`` / ``_PASSWORD`` (else the case source's ``MEDANNOT_DICOMWEB_USER`` /
    ``_PASSWORD``) and ``MEDANNOT_DICOMWEB_TIMEOUT``."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls) -> ArchiveCredentials:
        from medannot.server.pacs import DicomWebSettings

        source = DicomWebSettings.from_env()
        user = os.environ.get("MEDANNOT_RESULTS_DICOMWEB_USER") or source.user
        password = os.environ.get("MEDANNOT_RESULTS_DICOMWEB_PASSWORD") or source.password
        return cls(user, password, source.timeout_s)


def set_archive(session: Session, store: ObjectStore, project_id: int, url: str | None, actor: str) -> int:
    """Name (or, with None, clear) the project's results archive; queues every case already final. Returns how
    many files were queued."""
    project = session.get(Project, project_id)
    if project is None:
        raise MedAnnotError(f"no project {project_id}")
    if url is not None:
        url = url.strip().rstrip("/")
        if "@" in url.split("/")[2 if "//" in url else 0]:
            raise MedAnnotError("the archive URL carries credentials (user:password@): they are never stored; give "
                                "the DICOMweb root URL alone and set MEDANNOT_RESULTS_DICOMWEB_USER / _PASSWORD in "
                                "the server's environment")
        if not url.startswith(("http://", "https://")):
            raise MedAnnotError(f"{url!r} is not a DICOMweb root URL such as https://pacs.example.org/dicom-web")
    old = project.results_dicomweb
    project.results_dicomweb = url
    for row in session.scalars(select(ArchiveSend).where(ArchiveSend.project_id == project_id,
                                                         ArchiveSend.status == PENDING)):
        if row.archive_url != url:
            row.status = SUPERSEDED
    append_audit(session, actor, "project.archive", f"project:{project_id}", {"results_dicomweb": old},
                 {"results_dicomweb": url})
    if url is None:
        return 0
    return sum(enqueue_final(session, store, review)
               for review in session.scalars(select(Review).where(Review.project_id == project_id)
                                             .order_by(Review.id)))


def final_files(session: Session, review: Review) -> list[tuple[str, str]]:
    """(kind, sha256) of what a final review sends: the result SEG + SR, the SR the approver verified, and the
    consensus SEG + SR when the result is a reader's SEG; empty while the review is not final."""
    from medannot.server.review import review_summary

    summary = review_summary(session, review)
    if not summary["final"]:
        return []
    result = summary["result"]
    assert isinstance(result, dict)
    files: list[tuple[str, str | None]] = []
    if result["kind"] == "submission":
        submission = session.get(Submission, result["submission_id"])
        assert submission is not None
        files += [("seg", submission.seg_sha256), ("sr", submission.sr_sha256)]
        files += [("consensus-seg", review.consensus_seg_sha256), ("consensus-sr", review.consensus_sr_sha256)]
        signed = select(Signature.verified_sr_sha256).where(Signature.submission_id == submission.id)
    else:
        prefix = "" if result["kind"] == "consensus" else "edited-"
        seg, sr = ((review.consensus_seg_sha256, review.consensus_sr_sha256) if result["kind"] == "consensus"
                   else (review.edited_seg_sha256, review.edited_sr_sha256))
        files += [(f"{prefix}seg", seg), (f"{prefix}sr", sr)]
        signed = select(Signature.verified_sr_sha256).where(Signature.review_id == review.id,
                                                            Signature.subject == result["kind"])
    files += [("verified-sr", sha) for sha in session.scalars(signed)]
    return [(kind, sha) for kind, sha in files if sha]


def enqueue_final(session: Session, store: ObjectStore, review: Review) -> int:
    """Queue ``review``'s final files for its project's archive (once each); returns how many rows were added."""
    project = session.get(Project, review.project_id)
    if project is None or not project.results_dicomweb:
        return 0
    added = 0
    for kind, sha in final_files(session, review):
        exists = session.scalar(select(ArchiveSend.id).where(
            ArchiveSend.project_id == project.id, ArchiveSend.sha256 == sha,
            ArchiveSend.archive_url == project.results_dicomweb))
        if exists is not None:
            continue
        header = dcmread(BytesIO(store.get(sha)), stop_before_pixels=True)
        session.add(ArchiveSend(project_id=project.id, case_id=review.case_id, review_id=review.id, kind=kind,
                                sha256=sha, sop_uid=str(header.SOPInstanceUID), study_uid=str(header.StudyInstanceUID),
                                series_uid=str(header.SeriesInstanceUID), archive_url=project.results_dicomweb,
                                status=PENDING, attempts=0, next_attempt_at=utcnow()))
        added += 1
    if added:
        session.flush()
        append_audit(session, "server", "archive.queue", f"review:{review.id}", None,
                     {"files": added, "archive": project.results_dicomweb})
    return added


@dataclass
class SendResult:
    """What one send attempt did."""

    outbox_id: int
    sop_uid: str
    sent: bool
    error: str | None = None


def send_due(factory: sessionmaker[Session], store: ObjectStore, credentials: ArchiveCredentials | None = None,
             now: datetime | None = None, limit: int = 50, only: list[int] | None = None) -> list[SendResult]:
    """Send every outbox row that is due (at most ``limit``; of the rows ``only`` when given); returns what each
    attempt did.

    Rows are claimed (their next attempt pushed ``IN_FLIGHT`` ahead) in one short transaction, sent outside any
    transaction, then recorded: sent, or pending with the error and a delay of 5 s doubling per attempt (at most
    10 min). Safe to run from several processes."""
    credentials = credentials or ArchiveCredentials.from_env()
    now = now or utcnow()
    with transaction(factory) as session:
        query = select(ArchiveSend).where(ArchiveSend.status == PENDING, ArchiveSend.next_attempt_at <= now)
        if only is not None:
            query = query.where(ArchiveSend.id.in_(only))
        rows = list(session.scalars(query.order_by(ArchiveSend.id).limit(limit).with_for_update(skip_locked=True)))
        for row in rows:
            row.next_attempt_at = now + IN_FLIGHT
        claimed = [(r.id, r.sha256, r.sop_uid, r.study_uid, r.series_uid, r.archive_url) for r in rows]
    results = []
    for outbox_id, sha, sop, study, series, url in claimed:
        try:
            send_instance(url, store.get(sha), sop, study, series, credentials)
            results.append(SendResult(outbox_id, sop, True))
        except (ArchiveError, OSError) as exc:
            results.append(SendResult(outbox_id, sop, False, str(exc)))
    with transaction(factory) as session:
        for result in results:
            row = session.get(ArchiveSend, result.outbox_id)
            assert row is not None
            row.attempts += 1
            if result.sent:
                row.status, row.sent_at, row.last_error = SENT, utcnow(), None
                append_audit(session, "server", "archive.sent", f"outbox:{row.id}", None,
                             {"sop_uid": row.sop_uid, "sha256": row.sha256, "archive": row.archive_url,
                              "attempts": row.attempts})
            else:
                delay = min(MAX_DELAY_S, 5.0 * 2 ** (row.attempts - 1))
                row.last_error = (result.error or "")[:2000]
                row.next_attempt_at = utcnow() + timedelta(seconds=delay)
                logger.warning("archive %s: %s not sent (attempt %d, next in %.0f s): %s", row.archive_url,
                               row.sop_uid, row.attempts, delay, row.last_error)
    return results


def send_instance(url: str, data: bytes, sop_uid: str, study_uid: str, series_uid: str,
                  credentials: ArchiveCredentials) -> None:
    """STOW-RS ``data`` to ``url``; raises ``ArchiveError`` unless the archive lists ``sop_uid`` as stored and a
    WADO-RS read-back of it is byte for byte ``data``."""
    import requests

    auth = (credentials.user, credentials.password) if credentials.user else None
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    try:
        answer = requests.post(f"{url}/studies", data=body, auth=auth, timeout=credentials.timeout_s,
                               headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                        f"boundary={boundary}",
                                        "Accept": "application/dicom+json"})
    except requests.RequestException as exc:
        raise ArchiveError(f"{url}: cannot reach the archive ({type(exc).__name__})") from None
    if answer.status_code not in (200, 202):
        raise ArchiveError(f"{url}: STOW-RS answered HTTP {answer.status_code}: {answer.text[:200]}")
    if sop_uid not in _stored_uids(answer):
        raise ArchiveError(f"{url}: the archive's STOW-RS response does not list {sop_uid} as stored "
                           f"(HTTP {answer.status_code}: {answer.text[:200]})")
    try:
        back = requests.get(f"{url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", auth=auth,
                            timeout=credentials.timeout_s,
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    except requests.RequestException as exc:
        raise ArchiveError(f"{url}: stored {sop_uid} but cannot read it back ({type(exc).__name__})") from None
    if back.status_code != 200:
        raise ArchiveError(f"{url}: stored {sop_uid} but WADO-RS read-back answered HTTP {back.status_code}")
    if _first_part(back) != data:
        raise ArchiveError(f"{url}: {sop_uid} read back from the archive differs from the file sent (the archive "
                           "changed it); not counted as sent")


def _stored_uids(answer: Any) -> set[str]:
    try:
        body = answer.json()
    except ValueError:
        return set()
    found = set()
    for item in (body.get("00081199", {}) or {}).get("Value", []) if isinstance(body, dict) else []:
        values = (item.get("00081155", {}) or {}).get("Value", [])
        found.update(str(v) for v in values)
    return found


def _first_part(answer: Any) -> bytes:
    """The first body part of a multipart/related answer."""
    content_type = answer.headers.get("Content-Type", "")
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";")
                     if p.strip().lower().startswith("boundary=")), None)
    if boundary is None:
        return answer.content
    parts = answer.content.split(b"--" + boundary.encode())
    for part in parts[1:]:
        if part.startswith(b"--"):
            break
        head, _, body = part.partition(b"\r\n\r\n")
        return body[:-2] if body.endswith(b"\r\n") else body
    return b""


def retry_now(session: Session, project_id: int, outbox_id: int, actor: str) -> ArchiveSend:
    """Make a waiting file of the project's outbox due now (its next attempt was minutes away after failures), for
    an immediate :func:`send_due` or the server's sender; audited. A file already sent is refused. (Were it being
    sent at this moment, it may be sent twice: the archive keeps one instance per SOP Instance UID.)"""
    row = session.scalar(select(ArchiveSend).where(ArchiveSend.id == outbox_id, ArchiveSend.project_id == project_id)
                         .with_for_update())
    if row is None:
        raise MedAnnotError(f"project {project_id} has no outbox file {outbox_id}; "
                            f"`medannot admin archive list --project {project_id}` lists them")
    if row.status != PENDING:
        raise MedAnnotError(f"outbox file {outbox_id} is {row.status}, not waiting: nothing to retry")
    now = utcnow()
    old = row.next_attempt_at
    row.next_attempt_at = now
    append_audit(session, actor, "archive.retry", f"outbox:{row.id}", {"next_attempt_at": old.isoformat() + "Z"},
                 {"next_attempt_at": now.isoformat() + "Z"})
    return row


def outbox_rows(session: Session, project_id: int | None = None) -> list[dict[str, object]]:
    """The outbox as listed (dashboard, CLI): one row per file, newest first."""
    from medannot.server.models import Case

    query = select(ArchiveSend).order_by(ArchiveSend.id.desc())
    if project_id is not None:
        query = query.where(ArchiveSend.project_id == project_id)
    rows = []
    for row in session.scalars(query):
        case = session.get(Case, row.case_id)
        rows.append({"id": row.id, "project_id": row.project_id, "case": case.case_key if case else row.case_id,
                     "kind": row.kind, "sop_uid": row.sop_uid, "sha256": row.sha256, "status": row.status,
                     "attempts": row.attempts,
                     "last_error": row.last_error, "archive": row.archive_url,
                     "next_attempt_at": row.next_attempt_at.isoformat() if row.status == PENDING else None,
                     "sent_at": row.sent_at.isoformat() if row.sent_at else None})
    return rows


class ArchiveWorker:
    """The server's sender: every ``interval`` seconds, :func:`send_due` (started by ``medannot serve``)."""

    def __init__(self, factory: sessionmaker[Session], store: ObjectStore, interval: float) -> None:
        self.factory, self.store, self.interval = factory, store, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medannot-archive", daemon=True)

    def start(self) -> ArchiveWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                send_due(self.factory, self.store)
            except Exception:  # noqa: BLE001 - the sender must outlive one bad round; the log names it
                logger.exception("archive sender: one round failed; retrying in %.0f s", self.interval)
