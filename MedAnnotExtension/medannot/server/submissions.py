"""Accept a reader's SEG + SR for a leased task: idempotent, checked against the case and the guideline,
stored content-addressed; a correction is a new submission that points at the one it replaces."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO

from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from medannot.dicomseg.reader import provenance_summary
from medannot.errors import MedAnnotError
from medannot.server import submission_checks as checks
from medannot.server.audit import append_audit
from medannot.server.config import DEFAULT_CORRECTION_SECONDS, DEFAULT_MAX_UPLOAD_BYTES
from medannot.server.db import transaction
from medannot.server.models import (
    TASK_SUBMITTED, Case, GuidelineVersion, IdempotencyKey, Project, Submission, Task, User, utcnow,
)
from medannot.server.queue import held_lease, lease_digest, lease_matches, not_held
from medannot.server.storage import ObjectStore
from medannot.server.uploads import MAX_SR_BYTES, UploadTooLarge, check_decoded_size, read_dicom_bounded


class SubmissionRejected(MedAnnotError):
    """The uploaded SEG/SR does not belong to this task (series, guideline) or is not a SEG + SR."""


class SubmissionConflict(MedAnnotError):
    """The Idempotency-Key was already used for a different task."""


@dataclass(frozen=True)
class SubmitResult:
    submission: Submission
    replayed: bool
    review_id: int | None = None  # the review round this submission completed (to measure after the commit)


def _existing(session: Session, user: User, key: str, task_id: int,
              lease_token: str | None) -> Submission | None:
    """The submission this Idempotency-Key already made, if any. A replay must be for the same task and present
    the lease the submit was made with (the same refusal as any wrong token otherwise)."""
    record = session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user.id,
                                                         IdempotencyKey.key == key))
    if record is None:
        return None
    if record.task_id != task_id:
        raise SubmissionConflict(f"Idempotency-Key {key!r} was already used for task {record.task_id}; "
                                 "use a new key for each submit")
    if record.lease_sha256 is not None and not lease_matches(record.lease_sha256, lease_token):
        raise not_held(task_id)
    return session.get(Submission, record.submission_id)


def _sha256(data: bytes | BinaryIO) -> str:
    """The sha256 of an upload, read in pieces and rewound (the object store names files by this digest)."""
    stream = _as_file(data)
    stream.seek(0)
    digest = hashlib.sha256()
    for piece in iter(lambda: stream.read(1 << 20), b""):
        digest.update(piece)
    stream.seek(0)
    return digest.hexdigest()


def _same_upload(replay: SubmitResult, key: str, seg_data: bytes | BinaryIO, sr_data: bytes | BinaryIO) -> None:
    """A replay must carry the files of the submit it replays: the same key with other files is refused (422, as
    the IETF Idempotency-Key draft asks) instead of being answered as if those files had been stored."""
    stored = replay.submission
    differs = [name for name, data, sha in (("seg", seg_data, stored.seg_sha256), ("sr", sr_data, stored.sr_sha256))
               if _sha256(data) != sha]
    if differs:
        raise SubmissionRejected(f"Idempotency-Key {key!r} was already used for submission {stored.id} of task "
                                 f"{stored.task_id} with other files (this request's {' and '.join(differs)} "
                                 "differ); use a new key for a new submit; nothing was stored")


@dataclass(frozen=True)
class ParsedUpload:
    """What the server needs to know of an uploaded SEG + SR, read before any transaction is opened."""

    series_uids: set[str]
    seg_uid: str
    guideline: dict[str, str | None]
    seg: Dataset | None = None  # the SEG's attributes, without its pixel data
    sr: Dataset | None = None


def _as_file(data: bytes | BinaryIO) -> BinaryIO:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data


def parse_upload(seg_data: bytes | BinaryIO, sr_data: bytes | BinaryIO,
                 max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> ParsedUpload:
    """Read the uploaded SEG and SR within bounds; anything unreadable or malformed is the uploader's problem (422),
    anything that would inflate past ``max_bytes`` (the SR: past :data:`MAX_SR_BYTES`) is refused (413)."""
    try:
        seg = read_dicom_bounded(_as_file(seg_data), "seg", max_bytes, stop_before_pixels=True)
        sr = read_dicom_bounded(_as_file(sr_data), "sr", min(MAX_SR_BYTES, max_bytes))
        if seg.get("Modality") != "SEG" or "SegmentSequence" not in seg:
            raise SubmissionRejected(f"file 'seg' is not a DICOM-SEG (Modality {seg.get('Modality')})")
        if sr.get("Modality") != "SR":
            raise SubmissionRejected(f"file 'sr' is not a DICOM SR (Modality {sr.get('Modality')})")
        check_decoded_size(seg, "seg", max_bytes)
        series = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
        summary = provenance_summary(seg, sr)
        return ParsedUpload(series, str(seg.SOPInstanceUID), summary["guideline"], seg, sr)
    except (SubmissionRejected, UploadTooLarge):
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed upload must give 422, never 500
        raise SubmissionRejected(f"the upload is not a readable SEG + SR pair ({type(exc).__name__}: {exc})") from exc


def _check_content(session: Session, task: Task, upload: ParsedUpload) -> None:
    """The series and guideline checks that a reviewer's edited upload also passes."""
    case = session.get(Case, task.case_id)
    assert case is not None
    if case.series_uid not in upload.series_uids:
        raise SubmissionRejected(f"the SEG references series {sorted(upload.series_uids) or 'none'}, not case "
                                 f"{case.case_key}'s series {case.series_uid}; export it from this task's images")
    versions = {v.version: v for v in session.scalars(
        select(GuidelineVersion).where(GuidelineVersion.project_id == task.project_id))}
    g = upload.guideline
    project_guideline = next(iter(versions.values())).guideline_id if versions else None
    if g["id"] != project_guideline or g["version"] not in versions:
        raise SubmissionRejected(f"the SEG follows guideline {g['id']} {g['version']}, but this project uses "
                                 f"{project_guideline} versions {', '.join(sorted(versions))}")
    if g["sha256"] and g["sha256"] != versions[str(g["version"])].sha256:
        raise SubmissionRejected(f"guideline {g['id']} {g['version']} in the SEG has sha256 {str(g['sha256'])[:12]}..., "
                                 "not the project's text of that version; export with the project's guideline")


def _check_submission(session: Session, task: Task, user: User, upload: ParsedUpload, instances: set[str]) -> None:
    """A reader's SEG + SR: their own, for this task, on exactly this case's images, under the project's guideline."""
    assert upload.seg is not None and upload.sr is not None
    case = session.get(Case, task.case_id)
    assert case is not None
    versions = {v.version: v.sha256 for v in session.scalars(
        select(GuidelineVersion).where(GuidelineVersion.project_id == task.project_id))}
    project = session.get(Project, task.project_id)
    root = checks.sr_root_items(upload.sr)
    try:
        checks.check_reader(upload.seg, upload.sr, user.username, user.printed_name)
        checks.check_task(upload.seg, root, task.id)
        checks.check_case_references(upload.seg, upload.sr, case.study_uid, case.series_uid, case.case_key,
                                     instances)
        checks.check_guideline(upload.seg, root, project.guideline_id if project else None, versions)
    except checks.ProvenanceMismatch as exc:
        raise SubmissionRejected(f"task {task.id}: {exc}; nothing was stored") from exc


def case_instances(factory: sessionmaker[Session], case_id: int) -> set[str]:
    """The SOP Instance UIDs of a case's series: as stored, else read from its source now and stored."""
    from medannot.server import pacs

    with transaction(factory) as session:
        case = session.get(Case, case_id)
        assert case is not None
        if case.instance_uids is not None:
            return set(json.loads(case.instance_uids))
        source_text = case.source
    uids = pacs.instance_uids(pacs.parse_source(source_text))  # outside a transaction: it may ask the PACS
    remember_instances(factory, case_id, uids)
    return set(uids)


def remember_instances(factory: sessionmaker[Session], case_id: int, uids: list[str]) -> None:
    """Add ``uids`` to the case's known instances (a series the PACS completed later keeps what readers saw)."""
    with transaction(factory) as session:
        case = session.get(Case, case_id)
        assert case is not None
        known = set(json.loads(case.instance_uids)) if case.instance_uids else set()
        if not set(uids) <= known:
            case.instance_uids = json.dumps(sorted(known | set(uids)))


def _refuse_in_review(session: Session, task: Task) -> None:
    from medannot.server.review import in_active_review

    active = in_active_review(session, task.case_id)
    if active is not None:
        raise SubmissionConflict(f"task {task.id}: case is in review (review task {active.id}, {active.status}); "
                                 "a correction is no longer accepted, ask the reviewer to return the case")


def begin_submit(factory: sessionmaker[Session], user_id: int, task_id: int, lease_token: str | None,
                 idempotency_key: str) -> SubmitResult | None:
    """What is checked before any byte of the upload is read: the Idempotency-Key (a replay is answered from the
    database), the task, the caller's lease and that the case is not in review. Returns the replay, if it is one."""
    if not idempotency_key or len(idempotency_key) > 128:
        raise SubmissionRejected("an Idempotency-Key header (1-128 characters) is required for submit")
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        previous = _existing(session, user, idempotency_key, task_id, lease_token)
        if previous is not None:
            return SubmitResult(previous, True)
        task = held_lease(session, user, task_id, lease_token, allow_submitted=True)
        _refuse_in_review(session, task)
    return None


def submit(factory: sessionmaker[Session], store: ObjectStore, user_id: int, task_id: int, lease_token: str | None,
           idempotency_key: str, seg_data: bytes | BinaryIO, sr_data: bytes | BinaryIO,
           max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
           correction_seconds: int = DEFAULT_CORRECTION_SECONDS) -> SubmitResult:
    """Store a submission exactly once per (user, Idempotency-Key).

    The lease is checked first, then the files are read (bounded) and checked against the reader, the task, the
    case and the guideline; only then are they written (content-addressed, before the transaction, which holds just
    the checks again and the rows). A refusal stores nothing. A replay of the key must carry the same files and
    lease. The same files sent again under a new key (Submit pressed twice while offline) are answered with the
    submission they already made, not stored as a "correction". After the first submit, corrections are accepted
    with the same lease for ``correction_seconds`` (and only until the case goes to review).
    """
    replay = begin_submit(factory, user_id, task_id, lease_token, idempotency_key)
    if replay is not None:
        _same_upload(replay, idempotency_key, seg_data, sr_data)
        return replay
    upload = parse_upload(seg_data, sr_data, max_upload_bytes)
    with transaction(factory) as session:
        task = held_lease(session, session.get(User, user_id), task_id, lease_token,  # type: ignore[arg-type]
                          allow_submitted=True)
        case_id = task.case_id
    instances = case_instances(factory, case_id)
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        _check_submission(session, held_lease(session, user, task_id, lease_token, allow_submitted=True), user,
                          upload, instances)
    (seg_sha, seg_new), (sr_sha, sr_new) = store.put_file(_as_file(seg_data)), store.put_file(_as_file(sr_data))
    try:
        return _record(factory, user_id, task_id, lease_token, idempotency_key, upload, instances, seg_sha, sr_sha,
                       correction_seconds)
    except MedAnnotError:
        # refused in the last moment (the lease expired meanwhile, the case went to review): nothing stays stored
        _forget_unreferenced(factory, store, [sha for sha, new in ((seg_sha, seg_new), (sr_sha, sr_new)) if new])
        raise


def _forget_unreferenced(factory: sessionmaker[Session], store: ObjectStore, shas: list[str]) -> None:
    if not shas:
        return
    with transaction(factory) as session:
        used = set(session.scalars(select(Submission.seg_sha256).where(Submission.seg_sha256.in_(shas))))
        used |= set(session.scalars(select(Submission.sr_sha256).where(Submission.sr_sha256.in_(shas))))
    for sha in set(shas) - used:
        store.remove(sha)


def _record(factory: sessionmaker[Session], user_id: int, task_id: int, lease_token: str | None,
            idempotency_key: str, upload: ParsedUpload, instances: set[str], seg_sha: str,
            sr_sha: str, correction_seconds: int = DEFAULT_CORRECTION_SECONDS) -> SubmitResult:
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        task = held_lease(session, user, task_id, lease_token, allow_submitted=True)
        # a replay that raced us to the row lock
        previous = _existing(session, user, idempotency_key, task_id, lease_token)
        if previous is not None:
            return SubmitResult(previous, True)
        _check_submission(session, task, user, upload, instances)
        from medannot.server.review import open_review_if_complete

        _refuse_in_review(session, task)
        replaces = session.scalar(select(Submission).where(Submission.task_id == task.id)
                                  .order_by(Submission.id.desc()).limit(1))
        if (task.status == TASK_SUBMITTED and replaces is not None and replaces.user_id == user.id
                and (replaces.seg_sha256, replaces.sr_sha256) == (seg_sha, sr_sha)):
            # the very files of the current submission again, under a new key: the same submission, no correction
            session.add(IdempotencyKey(user_id=user.id, key=idempotency_key, task_id=task.id,
                                       submission_id=replaces.id, lease_sha256=lease_digest(lease_token or ""),
                                       created_at=utcnow()))
            return SubmitResult(replaces, True)
        submission = Submission(task_id=task.id, user_id=user.id, seg_sha256=seg_sha, sr_sha256=sr_sha,
                                seg_sop_uid=upload.seg_uid, guideline_version=str(upload.guideline["version"]),
                                replaces_id=replaces.id if replaces else None, created_at=utcnow())
        session.add(submission)
        session.flush()
        session.add(IdempotencyKey(user_id=user.id, key=idempotency_key, task_id=task.id,
                                   submission_id=submission.id, lease_sha256=lease_digest(lease_token or ""),
                                   created_at=utcnow()))
        old_status = task.status
        task.status = TASK_SUBMITTED
        task.submitted_at = utcnow()
        if old_status != TASK_SUBMITTED:  # the correction window runs from the first submit of this lease
            task.lease_expires_at = task.submitted_at + timedelta(seconds=correction_seconds)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            previous = _existing(session, user, idempotency_key, task_id, lease_token)
            if previous is None:
                raise
            return SubmitResult(previous, True)
        append_audit(session, user.username, "task.submit" if replaces is None else "task.correct",
                     f"task:{task.id}", {"status": old_status},
                     {"status": TASK_SUBMITTED, "submission": submission.id, "seg_sha256": seg_sha,
                      "sr_sha256": sr_sha, "seg_uid": upload.seg_uid, "replaces": submission.replaces_id})
        review = open_review_if_complete(session, task)
        return SubmitResult(submission, False, review.id if review else None)
