"""The task queue: claim a slot under a lease, keep it alive, give it back, submit a result.

A reader never gets two slots of one case and holds at most one lease per project. Expired leases go back to the
queue (audited) before every claim. PostgreSQL claimers skip each other's locked rows (FOR UPDATE SKIP LOCKED);
SQLite write transactions are serialised (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.models import (
    TASK_LEASED, TASK_OPEN, TASK_RETURNED, TASK_SUBMITTED, AuditRecord, Case, Submission, Task, User, utcnow,
)


class LeaseError(MedAnnotError):
    """The lease is not (or no longer) held by the caller: stale token, expired, or someone else's task."""


class TaskNotFound(MedAnnotError):
    """No such task."""


def lease_digest(token: str) -> str:
    """What the database keeps of a lease token: its sha256 (a copy of the database holds no live token)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_lease() -> tuple[str, str]:
    """A fresh lease token (256 bits) and its digest; only the digest is stored, the token goes to the claimer."""
    token = secrets.token_urlsafe(32)
    return token, lease_digest(token)


def lease_matches(stored_digest: str | None, token: str | None) -> bool:
    """Whether ``token`` is the lease whose digest is stored (in constant time)."""
    if not stored_digest or not token:
        return False
    return secrets.compare_digest(stored_digest.encode(), lease_digest(token).encode())


def not_held(task_id: int) -> LeaseError:
    """The one answer for a task that does not exist, is someone else's or whose token is wrong: a reader cannot
    tell the three apart, so task ids cannot be probed (issue #14 I3)."""
    return LeaseError(f"task {task_id}: this lease token is not (or no longer) valid; claim the task again")


@dataclass(frozen=True)
class Claim:
    task: Task
    case: Case
    lease_token: str  # the token itself: handed out once, in the claim's answer


def expire_leases(session: Session, project_id: int, now: datetime) -> int:
    """Put every expired lease of a project back in the queue, one audit record each (naming whose it was)."""
    query = select(Task).where(Task.project_id == project_id, Task.status == TASK_LEASED, Task.lease_expires_at < now)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    expired = session.scalars(query).all()
    for task in expired:
        holder = session.get(User, task.reader_id) if task.reader_id else None
        # a slot a reviewer returned stays its reader's: it goes back to "returned", not to the open queue
        returned = session.scalar(select(Submission.id).where(Submission.task_id == task.id).limit(1)) is not None
        status = TASK_RETURNED if returned else TASK_OPEN
        append_audit(session, None, "lease.expire", f"task:{task.id}",
                     {"status": TASK_LEASED, "reader": holder.username if holder else None,
                      "lease_expires_at": task.lease_expires_at}, {"status": status}, "lease expired")
        task.status, task.lease_sha256, task.lease_expires_at = status, None, None
        if not returned:
            task.reader_id = None
    return len(expired)


def claim_next_task(session: Session, user: User, project_id: int, lease_seconds: int) -> Claim | None:
    """Give ``user`` a leased slot in the project: their current one if they hold one, else the next free slot
    of a case they have not read. Returns None when nothing is left for them.

    Only the lease token's digest is stored, so claiming a slot one already holds (a restarted client that lost
    its token) hands out a new token for it; the old one stops working."""
    now = utcnow()
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # one claim at a time per reader, so two parallel requests of one reader cannot take two slots
        session.execute(select(User.id).where(User.id == user.id).with_for_update())
    expire_leases(session, project_id, now)
    held = session.scalar(select(Task).where(Task.project_id == project_id, Task.status == TASK_LEASED,
                                             Task.reader_id == user.id).limit(1))
    if held is not None:
        token, held.lease_sha256 = new_lease()
        held.lease_expires_at = now + timedelta(seconds=lease_seconds)
        append_audit(session, user.username, "task.claim", f"task:{held.id}", {"status": TASK_LEASED},
                     {"status": TASK_LEASED, "reader": user.username, "lease_expires_at": held.lease_expires_at},
                     "claimed again: a new lease token replaces the old one")
        return Claim(held, session.get(Case, held.case_id), token)  # type: ignore[arg-type]
    returned = session.scalar(select(Task).where(Task.project_id == project_id, Task.status == TASK_RETURNED,
                                                 Task.reader_id == user.id).order_by(Task.id).limit(1))
    if returned is not None:  # a reviewer sent this read back: it comes before new work
        task = returned
        old_status = TASK_RETURNED
    else:
        task, old_status = None, TASK_OPEN
    other = aliased(Task)
    already_read = exists().where(and_(other.case_id == Task.case_id, other.reader_id == user.id))
    query = (select(Task).where(Task.project_id == project_id, Task.status == TASK_OPEN, ~already_read)
             .order_by(Task.case_id, Task.slot).limit(1))
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Task)
    if task is None:
        task = session.scalar(query)
    if task is None:
        return None
    task.status = TASK_LEASED
    task.reader_id = user.id
    token, task.lease_sha256 = new_lease()
    task.lease_expires_at = now + timedelta(seconds=lease_seconds)
    task.claimed_at = now
    append_audit(session, user.username, "task.claim", f"task:{task.id}", {"status": old_status},
                 {"status": TASK_LEASED, "reader": user.username, "lease_expires_at": task.lease_expires_at})
    return Claim(task, session.get(Case, task.case_id), token)  # type: ignore[arg-type]


def _task(session: Session, task_id: int, lock: bool = True) -> Task:
    query = select(Task).where(Task.id == task_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    task = session.scalar(query)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    return task


def held_lease(session: Session, user: User, task_id: int, lease_token: str | None,
               allow_submitted: bool = False) -> Task:
    """The task, if ``user`` holds its lease with this token and it has not expired. With ``allow_submitted`` a
    submitted task is also returned while its correction window (``lease_expires_at`` after submit) is open."""
    try:
        task = _task(session, task_id)
    except TaskNotFound:
        raise not_held(task_id) from None
    now = utcnow()
    if task.reader_id != user.id or not lease_matches(task.lease_sha256, lease_token):
        raise not_held(task_id)
    if task.status == TASK_SUBMITTED and allow_submitted:
        if task.lease_expires_at is None or task.lease_expires_at <= now:
            closed = f" at {task.lease_expires_at:%Y-%m-%d %H:%M} UTC" if task.lease_expires_at else ""
            raise LeaseError(f"task {task_id}: the correction window of this submitted read closed{closed}; ask a "
                             "reviewer to return the case to you if the read must change")
        return task
    if task.status != TASK_LEASED or task.lease_expires_at is None or task.lease_expires_at <= now:
        raise LeaseError(f"task {task_id}: the lease expired; claim again (your drawing is kept locally)")
    return task


def heartbeat(session: Session, user: User, task_id: int, lease_token: str | None, lease_seconds: int) -> Task:
    """Extend a held lease by the lease length."""
    task = held_lease(session, user, task_id, lease_token)
    old = task.lease_expires_at
    task.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    # audited once per lease (the first extension after the claim), not per call: a client beating every minute
    # would otherwise write most of the trail; the lease's end (submit, release, expiry) is audited anyway
    last = session.scalar(select(AuditRecord.action).where(AuditRecord.entity == f"task:{task.id}")
                          .order_by(AuditRecord.seq.desc()).limit(1))
    if last != "lease.extend":
        append_audit(session, user.username, "lease.extend", f"task:{task.id}", {"lease_expires_at": old},
                     {"lease_expires_at": task.lease_expires_at})
    return task


def release(session: Session, user: User, task_id: int, lease_token: str | None, reason: str | None = None) -> None:
    """Give a leased slot back to the queue (audited); a slot a reviewer returned stays its reader's."""
    task = held_lease(session, user, task_id, lease_token)
    returned = session.scalar(select(Submission.id).where(Submission.task_id == task.id).limit(1)) is not None
    status = TASK_RETURNED if returned else TASK_OPEN
    task.status, task.lease_sha256, task.lease_expires_at = status, None, None
    if not returned:
        task.reader_id = None
    append_audit(session, user.username, "task.release", f"task:{task.id}", {"status": TASK_LEASED},
                 {"status": status}, reason)
