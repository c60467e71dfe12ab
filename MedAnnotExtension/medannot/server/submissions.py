"""Accept a reader's SEG + SR for a leased task: idempotent, checked against the case and the guideline,
stored content-addressed; a correction is a new submission that points at the one it replaces."""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from medannot.dicomseg.reader import provenance_summary
from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.db import transaction
from medannot.server.models import (
    TASK_SUBMITTED, Case, GuidelineVersion, IdempotencyKey, Submission, Task, User, utcnow,
)
from medannot.server.queue import held_lease
from medannot.server.storage import ObjectStore


class SubmissionRejected(MedAnnotError):
    """The uploaded SEG/SR does not belong to this task (series, guideline) or is not a SEG + SR."""


@dataclass(frozen=True)
class SubmitResult:
    submission: Submission
    replayed: bool


def _existing(session: Session, user: User, key: str) -> Submission | None:
    record = session.scalar(select(IdempotencyKey).where(IdempotencyKey.user_id == user.id,
                                                         IdempotencyKey.key == key))
    return session.get(Submission, record.submission_id) if record else None


def _check_content(session: Session, task: Task, seg_bytes: bytes, sr_bytes: bytes) -> tuple[dict, str]:
    try:
        seg = dcmread(io.BytesIO(seg_bytes))
        sr = dcmread(io.BytesIO(sr_bytes))
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the uploader's problem
        raise SubmissionRejected(f"the upload is not readable DICOM ({exc})") from exc
    if seg.get("Modality") != "SEG" or "SegmentSequence" not in seg:
        raise SubmissionRejected(f"file 'seg' is not a DICOM-SEG (Modality {seg.get('Modality')})")
    if sr.get("Modality") != "SR":
        raise SubmissionRejected(f"file 'sr' is not a DICOM SR (Modality {sr.get('Modality')})")
    case = session.get(Case, task.case_id)
    assert case is not None
    series = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    if case.series_uid not in series:
        raise SubmissionRejected(f"the SEG references series {sorted(series) or 'none'}, not case "
                                 f"{case.case_key}'s series {case.series_uid}; export it from this task's images")
    summary = provenance_summary(seg, sr)
    versions = {v.version: v for v in session.scalars(
        select(GuidelineVersion).where(GuidelineVersion.project_id == task.project_id))}
    g = summary["guideline"]
    project_guideline = next(iter(versions.values())).guideline_id if versions else None
    if g["id"] != project_guideline or g["version"] not in versions:
        raise SubmissionRejected(f"the SEG follows guideline {g['id']} {g['version']}, but this project uses "
                                 f"{project_guideline} versions {', '.join(sorted(versions))}")
    if g["sha256"] and g["sha256"] != versions[g["version"]].sha256:
        raise SubmissionRejected(f"guideline {g['id']} {g['version']} in the SEG has sha256 {g['sha256'][:12]}..., "
                                 "not the project's text of that version; export with the project's guideline")
    return summary, str(seg.SOPInstanceUID)


def submit(factory: sessionmaker[Session], store: ObjectStore, user_id: int, task_id: int, lease_token: str | None,
           idempotency_key: str, seg_bytes: bytes, sr_bytes: bytes) -> SubmitResult:
    """Store a submission exactly once per (user, Idempotency-Key)."""
    if not idempotency_key or len(idempotency_key) > 128:
        raise SubmissionRejected("an Idempotency-Key header (1-128 characters) is required for submit")
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        previous = _existing(session, user, idempotency_key)
        if previous is not None:
            return SubmitResult(previous, True)
        task = held_lease(session, user, task_id, lease_token, allow_submitted=True)
        summary, seg_uid = _check_content(session, task, seg_bytes, sr_bytes)
        seg_sha, sr_sha = store.put(seg_bytes), store.put(sr_bytes)
        replaces = session.scalar(select(Submission).where(Submission.task_id == task.id)
                                  .order_by(Submission.id.desc()).limit(1))
        submission = Submission(task_id=task.id, user_id=user.id, seg_sha256=seg_sha, sr_sha256=sr_sha,
                                seg_sop_uid=seg_uid, guideline_version=summary["guideline"]["version"],
                                replaces_id=replaces.id if replaces else None, created_at=utcnow())
        session.add(submission)
        session.flush()
        session.add(IdempotencyKey(user_id=user.id, key=idempotency_key, task_id=task.id,
                                   submission_id=submission.id, created_at=utcnow()))
        old_status = task.status
        task.status = TASK_SUBMITTED
        task.submitted_at = utcnow()
        task.lease_expires_at = None
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            previous = _existing(session, user, idempotency_key)
            if previous is None:
                raise
            return SubmitResult(previous, True)
        append_audit(session, user.username, "task.submit" if replaces is None else "task.correct",
                     f"task:{task.id}", {"status": old_status},
                     {"status": TASK_SUBMITTED, "submission": submission.id, "seg_sha256": seg_sha,
                      "sr_sha256": sr_sha, "seg_uid": seg_uid, "replaces": submission.replaces_id})
        return SubmitResult(submission, False)
