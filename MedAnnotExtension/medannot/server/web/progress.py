"""Where each case of a project stands (open, in reading, in review, final), the counts per project, and the
leases readers hold now: what the projects and cases pages show."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, literal, select
from sqlalchemy.orm import Session, aliased

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
    review_id: int | None = None  # the latest round's

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


def _latest(review: type[Review] = Review) -> ColumnElement[bool]:
    """True for a review that is its case's highest round (an index lookup per review, on every database)."""
    newer = aliased(Review)
    return ~exists().where(newer.case_id == review.case_id, newer.round > review.round)


def _latest_rounds(project_id: int) -> Select:  # type: ignore[type-arg]
    """Each case's highest review round in the project, with the columns its sign-off needs."""
    return select(*review_service.SIGN_OFF_COLUMNS, Review.case_id).where(Review.project_id == project_id, _latest())


def _status_column() -> ColumnElement[str]:
    """The one rule, as SQL over a case and its latest review round (the projects page counts with it, the cases
    page lists with it): a case whose latest round is not returned is in review (final once decided and the
    guideline's signatures are on its result: :func:`_final_reviews`); otherwise it is in reading as soon as any
    slot was claimed."""
    claimed = exists().where(Task.case_id == Case.id, Task.status != TASK_OPEN)
    in_review = and_(Review.status.is_not(None), Review.status != REVIEW_RETURNED)
    return case((in_review, literal(CASE_REVIEW)), (claimed, literal(CASE_READING)), else_=literal(CASE_OPEN))


def final_sign_offs(session: Session, project_id: int) -> dict[int, review_service.SignOff]:
    """The sign-offs of the project's latest rounds that are final, by review id: decided, with the signatures
    their guideline requires on the result's exact bytes (the review module's own rule, in bulk).

    Worked out once per database session (one page view: the dashboard reads in a session of its own), because
    the projects page needs them twice, for the counts and for when each case became final."""
    cache: dict[int, dict[int, review_service.SignOff]] = session.info.setdefault("final_sign_offs", {})
    if project_id not in cache:
        decided = session.execute(_latest_rounds(project_id).where(Review.status == REVIEW_DECIDED)).all()
        cache[project_id] = {review_id: sign_off for review_id, sign_off
                             in review_service.sign_offs(session, decided, project_id).items() if sign_off.final}
    return cache[project_id]


def _final_reviews(session: Session, project_id: int) -> set[int]:
    return set(final_sign_offs(session, project_id))


def _case_statuses(project_id: int) -> Select:  # type: ignore[type-arg]
    """Each case of the project with its latest review round (if any) and its status by :func:`_status_column`."""
    return (select(Case.id, Case.case_key, Review.id.label("review_id"), Review.status.label("review_status"),
                   _status_column().label("status"))
            .outerjoin(Review, and_(Review.case_id == Case.id, _latest()))
            .where(Case.project_id == project_id))


def status_counts(session: Session, project: Project) -> dict[str, int]:
    """How many cases of the project are open, in reading, in review and final: counted in the database, without
    a row per case."""
    counts = dict.fromkeys(CASE_STATUSES, 0)
    statuses = _case_statuses(project.id).subquery()
    for status, number in session.execute(select(statuses.c.status, func.count()).group_by(statuses.c.status)):
        counts[status] = number
    final = len(_final_reviews(session, project.id))
    counts[CASE_REVIEW] -= final
    counts[CASE_FINAL] += final
    return counts


def _status_rows(session: Session, project: Project) -> list[CaseRow]:
    """Every case of the project with its status and latest round, by case id; slots and Dice come after
    (:func:`_add_slots`, :func:`_add_dice`)."""
    final = _final_reviews(session, project.id)
    return [CaseRow(case_id=case_id, case_key=case_key, status=CASE_FINAL if review_id in final else status, slots=0,
                    review_status=review_status, review_id=review_id)
            for case_id, case_key, review_id, review_status, status
            in session.execute(_case_statuses(project.id).order_by(Case.id))]


def _add_slots(session: Session, project: Project, rows: list[CaseRow], every_case: bool) -> None:
    """Fill in the slots, submitted reads and readers of ``rows`` (all the project's cases when ``every_case``, else
    a page of them: then only those cases' slots are read)."""
    names = _usernames(session)
    tasks = select(Task.case_id, Task.status, Task.reader_id).where(Task.project_id == project.id)
    if not every_case:
        tasks = tasks.where(Task.case_id.in_([r.case_id for r in rows]))
    slots: dict[int, list[tuple[str, int | None]]] = defaultdict(list)
    for task in session.execute(tasks.order_by(Task.case_id, Task.slot)):
        slots[task.case_id].append((task.status, task.reader_id))
    for row in rows:
        own = slots.get(row.case_id, [])
        row.slots = len(own)
        row.submitted = sum(1 for task_status, _ in own if task_status == TASK_SUBMITTED)
        row.readers = [names.get(reader, "?") for _, reader in own if reader is not None]


def _add_dice(session: Session, project: Project, rows: list[CaseRow], every_case: bool) -> None:
    """Fill in the lowest Dice of ``rows``' latest rounds (as :func:`_add_slots`: all, or a page's)."""
    metrics = (select(ReviewMetric.review_id, func.min(ReviewMetric.dice))
               .join(Review, Review.id == ReviewMetric.review_id).where(Review.project_id == project.id)
               .group_by(ReviewMetric.review_id))
    if not every_case:
        metrics = metrics.where(Review.id.in_([r.review_id for r in rows if r.review_id is not None]))
    dice = dict(session.execute(metrics).all())
    for row in rows:
        row.lowest_dice = dice.get(row.review_id) if row.review_id is not None else None


def case_rows(session: Session, project: Project) -> list[CaseRow]:
    """Every case of the project with its status, readers, submitted slots and lowest Dice, by case id.

    A fixed number of queries, reading columns rather than ORM objects (a project has thousands of cases)."""
    rows = _status_rows(session, project)
    _add_slots(session, project, rows, every_case=True)
    _add_dice(session, project, rows, every_case=True)
    return rows


@dataclass(frozen=True)
class CasesPage:
    """What the cases page shows: one page of the matching cases, how many match, of how many; the readers."""

    rows: list[CaseRow]
    matching: int
    total: int
    readers: list[str]


def cases_page(session: Session, project: Project, status: str | None, reader: str | None, sort: str,
               descending: bool, offset: int, limit: int) -> CasesPage:
    """The cases page's rows: :func:`filter_and_sort`, then ``limit`` rows from ``offset``. What the filter and the
    sort do not need is read for the shown page only: every case's slots only for a reader filter or sort, every
    case's Dice only for the agreement sort."""
    rows = _status_rows(session, project)
    by_slots, by_dice = bool(reader) or sort == "reader", sort == "agreement"
    if by_slots:
        _add_slots(session, project, rows, every_case=True)
    if by_dice:
        _add_dice(session, project, rows, every_case=True)
    shown = filter_and_sort(rows, status, reader, sort, descending)
    page = shown[offset:offset + limit]
    if page and not by_slots:
        _add_slots(session, project, page, every_case=False)
    if page and not by_dice:
        _add_dice(session, project, page, every_case=False)
    readers = sorted(session.scalars(select(User.username).distinct().join(Task, Task.reader_id == User.id)
                                     .where(Task.project_id == project.id)))
    return CasesPage(page, len(shown), len(rows), readers)


def case_status(session: Session, project: Project, case_id: int) -> str:
    """One case's status (the case page), by the same rule."""
    row = session.execute(_case_statuses(project.id).where(Case.id == case_id)).one()
    if row.review_status == REVIEW_DECIDED:
        decided = session.execute(_latest_rounds(project.id).where(Review.id == row.review_id)).all()
        if review_service.sign_offs(session, decided)[row.review_id].final:
            return CASE_FINAL
    return str(row.status)


def open_leases(session: Session, project: Project, reader_id: int | None = None) -> list[Lease]:
    """The unexpired leases on the project's slots (of one reader when ``reader_id`` is given), soonest to expire
    first."""
    names = _usernames(session)
    query = (select(Task.reader_id, Task.case_id, Case.case_key, Task.slot, Task.lease_expires_at)
             .join(Case, Case.id == Task.case_id)
             .where(Task.project_id == project.id, Task.status == TASK_LEASED, Task.lease_expires_at > utcnow())
             .order_by(Task.lease_expires_at))
    if reader_id is not None:
        query = query.where(Task.reader_id == reader_id)
    return [Lease(names.get(task.reader_id or -1, "?"), task.case_id, task.case_key, task.slot, task.lease_expires_at)
            for task in session.execute(query) if task.lease_expires_at is not None]


def project_progress(session: Session, project: Project, reader_id: int | None = None) -> ProjectProgress:
    return ProjectProgress(project, status_counts(session, project), open_leases(session, project, reader_id))


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
