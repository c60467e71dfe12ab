"""Everything the case page shows of one case: its slots, its reads (blinded as in the API), each review round
with its agreement numbers and decisions, the signatures, and the audit records that name the case or its parts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from medannot.server import review as review_service
from medannot.server.models import TASK_LEASED, AuditRecord, Case, Review, Signature, Submission, Task, User


@dataclass(frozen=True)
class Slot:
    slot: int
    status: str
    reader: str | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    submitted_at: datetime | None


@dataclass(frozen=True)
class Read:
    submission_id: int
    slot: int
    reader: str
    created_at: datetime
    guideline_version: str
    seg_sha256: str | None  # None while blinded: the viewer may not see this read yet
    seg_uid: str | None
    replaces_id: int | None


@dataclass(frozen=True)
class CaseRecord:
    case: Case
    slots: list[Slot]
    reads: list[Read]
    hidden_reads: int
    rounds: list[dict[str, object]]  # review_detail of each round, newest first, metric pairs named by reader
    signatures: list[Signature]
    audit: list[AuditRecord]


def _pair_name(names: dict[str, str], key: str) -> str:
    return names.get(key, key)


def case_record(session: Session, case: Case, viewer: User) -> CaseRecord:
    """The record of ``case`` as ``viewer`` may see it: a read's files are named only when the API would let the
    viewer download it (blinding); audit records are listed whole (they never hold a password or token)."""
    users = dict(session.execute(select(User.id, User.username)).all())
    tasks = session.scalars(select(Task).where(Task.case_id == case.id).order_by(Task.slot)).all()
    slots = [Slot(t.slot, t.status, users.get(t.reader_id) if t.reader_id else None, t.claimed_at,
                  t.lease_expires_at if t.status == TASK_LEASED else None, t.submitted_at) for t in tasks]
    slot_of = {t.id: t.slot for t in tasks}
    submissions = session.scalars(select(Submission).where(Submission.task_id.in_(list(slot_of) or [-1]))
                                  .order_by(Submission.id)).all()
    reads, hidden = [], 0
    for s in submissions:
        visible = review_service.visible_submission(session, viewer, s)
        hidden += 0 if visible else 1
        reads.append(Read(s.id, slot_of[s.task_id], users.get(s.user_id, "?"), s.created_at, s.guideline_version,
                          s.seg_sha256 if visible else None, s.seg_sop_uid if visible else None, s.replaces_id))
    names = {str(s.id): f"{users.get(s.user_id, '?')} (read {s.id})" for s in submissions}
    reviews = session.scalars(select(Review).where(Review.case_id == case.id).order_by(Review.round.desc())).all()
    rounds = []
    for r in reviews:
        detail = review_service.review_detail(session, r)
        for metric in detail["metrics"]:  # type: ignore[attr-defined]
            metric["a_name"], metric["b_name"] = _pair_name(names, metric["a"]), _pair_name(names, metric["b"])
        rounds.append(detail)
    review_ids = [r.id for r in reviews]
    signatures = session.scalars(select(Signature).where(or_(
        Signature.submission_id.in_([s.id for s in submissions] or [-1]),
        Signature.review_id.in_(review_ids or [-1]))).order_by(Signature.signed_at, Signature.id)).all()
    entities = [f"case:{case.id}", *(f"task:{t.id}" for t in tasks), *(f"submission:{s.id}" for s in submissions)]
    for rid in review_ids:
        entities += [f"review:{rid}", f"review:{rid}:consensus", f"review:{rid}:edited"]
    audit = session.scalars(select(AuditRecord).where(AuditRecord.entity.in_(entities))
                            .order_by(AuditRecord.seq)).all()
    return CaseRecord(case, slots, reads, hidden, rounds, list(signatures), list(audit))


def audit_values(record: AuditRecord) -> str:
    """An audit record's change as one short line: ``old -> new`` of the JSON values it stores."""
    def short(text: str | None) -> str:
        if text is None:
            return ""
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return str(value)

    old, new = short(record.old_value), short(record.new_value)
    return f"{old} \u2192 {new}" if old else new
