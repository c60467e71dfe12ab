"""Where each case of a project stands (open, in reading, in review, final), the counts per project, and the
leases readers hold now: what the projects and cases pages show."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medannot.server import review as review_service
from medannot.server.models import (
    REVIEW_DECIDED, REVIEW_RETURNED, TASK_LEASED, TASK_OPEN, TASK_SUBMITTED, Case, Project, Review, ReviewMetric,
    Task, User, utcnow,
)

CASE_OPEN, CASE_READING, CASE_REVIEW, CASE_FINAL = "open", "reading", "review", "final"
CASE_STATUSES = (CASE_OPEN, CASE_READING, CASE_REVIEW, CASE_FINAL)  # in the order a case moves
STATUS_LABELS = {CASE_OPEN: "open", CASE_READING: "in reading", CASE_REVIEW: "in review", CASE_FINAL: "final"}


@dataclass(frozen=True)
class Lease:
    """A slot a reader holds now (never its lease token)."""

    reader: str
    case_id: int
    case_key: str
    slot: int
    expires_at: datetime


@dataclass
class CaseRow:
    """One line of a project's cases page."""

    case_id: int
    case_key: str
    status: str
    slots: int
    submitted: int = 0
    readers: list[str] = field(default_factory=list)  # who holds or read a slot, by slot
    review_status: str | None = None
    lowest_dice: float | None = None  # over every compared pair of the latest measured round

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]


@dataclass(frozen=True)
class ProjectProgress:
    project: Project
    counts: dict[str, int]  # case status -> number of cases
    leases: list[Lease]

    @property
    def cases(self) -> int:
        return sum(self.counts.values())


def _usernames(session: Session) -> dict[int, str]:
    return dict(session.execute(select(User.id, User.username)).all())


def _case_status(slot_statuses: list[str], latest_status: str | None, final: bool) -> str:
    """The one rule: a case whose latest review round is not returned is in review (final once decided and the
    guideline's signatures are on its result); otherwise it is in reading as soon as any slot was claimed."""
    if latest_status is not None and latest_status != REVIEW_RETURNED:
        return CASE_FINAL if final else CASE_REVIEW
    if any(status != TASK_OPEN for status in slot_statuses):
        return CASE_READING
    return CASE_OPEN


def case_rows(session: Session, project: Project) -> list[CaseRow]:
    """Every case of the project with its status, readers, submitted slots and lowest Dice, by case id.

    A fixed number of queries, reading columns rather than ORM objects (a project has thousands of cases)."""
    names = _usernames(session)
    cases = session.execute(select(Case.id, Case.case_key).where(Case.project_id == project.id)
                            .order_by(Case.id)).all()
    slots: dict[int, list[tuple[str, int | None]]] = defaultdict(list)
    for task in session.execute(select(Task.case_id, Task.status, Task.reader_id)
                                .where(Task.project_id == project.id).order_by(Task.case_id, Task.slot)):
        slots[task.case_id].append((task.status, task.reader_id))
    latest: dict[int, tuple[int, str]] = {}  # case id -> (review id, status) of its highest round
    for r in session.execute(select(Review.id, Review.case_id, Review.status)
                             .where(Review.project_id == project.id).order_by(Review.round)):
        latest[r.case_id] = (r.id, r.status)
    dice = dict(session.execute(select(ReviewMetric.review_id, func.min(ReviewMetric.dice))
                                .join(Review, Review.id == ReviewMetric.review_id)
                                .where(Review.project_id == project.id)
                                .group_by(ReviewMetric.review_id)).all())
    # "final" is the review module's own rule (the required signatures on the result's exact bytes), in bulk
    decided_ids = [rid for rid, status in latest.values() if status == REVIEW_DECIDED]
    decided = review_service.sign_offs(session, session.scalars(select(Review).where(Review.id.in_(decided_ids)))
                                       .all() if decided_ids else [])
    rows = []
    for case in cases:
        review_id, review_status = latest.get(case.id, (None, None))
        final = review_id in decided and decided[review_id].final  # type: ignore[index]
        own = slots.get(case.id, [])
        rows.append(CaseRow(
            case_id=case.id, case_key=case.case_key,
            status=_case_status([status for status, _ in own], review_status, final), slots=len(own),
            submitted=sum(1 for status, _ in own if status == TASK_SUBMITTED),
            readers=[names.get(reader, "?") for _, reader in own if reader is not None],
            review_status=review_status, lowest_dice=dice.get(review_id) if review_id is not None else None))
    return rows


def open_leases(session: Session, project: Project, reader_id: int | None = None) -> list[Lease]:
    """The unexpired leases on the project's slots (of one reader when ``reader_id`` is given), soonest to expire
    first."""
    names = _usernames(session)
    query = (select(Task, Case.case_key).join(Case, Case.id == Task.case_id)
             .where(Task.project_id == project.id, Task.status == TASK_LEASED, Task.lease_expires_at > utcnow())
             .order_by(Task.lease_expires_at))
    if reader_id is not None:
        query = query.where(Task.reader_id == reader_id)
    return [Lease(names.get(task.reader_id or -1, "?"), task.case_id, key, task.slot, task.lease_expires_at)
            for task, key in session.execute(query)
            if task.lease_expires_at is not None]


def project_progress(session: Session, project: Project, reader_id: int | None = None) -> ProjectProgress:
    counts = dict.fromkeys(CASE_STATUSES, 0)
    for row in case_rows(session, project):
        counts[row.status] += 1
    return ProjectProgress(project, counts, open_leases(session, project, reader_id))


SORTS = ("case", "status", "reader", "agreement")


def filter_and_sort(rows: list[CaseRow], status: str | None, reader: str | None, sort: str,
                    descending: bool) -> list[CaseRow]:
    """The cases page's view: only ``status`` and ``reader`` when given; sorted by case, status (in workflow
    order), reader (the first, alphabetically) or agreement (lowest Dice; unmeasured cases last)."""
    shown = [r for r in rows if (not status or r.status == status) and (not reader or reader in r.readers)]
    if sort == "agreement":
        measured = sorted((r for r in shown if r.lowest_dice is not None), key=lambda r: (r.lowest_dice, r.case_key),
                          reverse=descending)
        return measured + sorted((r for r in shown if r.lowest_dice is None), key=lambda r: r.case_key)
    keys = {
        "case": lambda r: (r.case_key,),
        "status": lambda r: (CASE_STATUSES.index(r.status), r.case_key),
        "reader": lambda r: (min(r.readers) if r.readers else "\uffff", r.case_key),
    }
    return sorted(shown, key=keys[sort], reverse=descending)
