"""The audit page's data: one page of the trail under filters (actor, action, entity, UTC date range), paged by
sequence number so a page never reads more than it shows, and the result of ``medannot audit verify`` (hash chain,
the anchors of ``MEDANNOT_AUDIT_ANCHOR_FILE``, the seals of the audit key) with the last anchor."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from medannot.audit import AuditAnchor, AuditEntry, check_anchors, read_anchors, verify_chain
from medannot.errors import MedAnnotError
from medannot.server.audit import KEY_FILE_ENV, audit_key, check_seals
from medannot.server.models import AuditRecord, Review, Submission, Task, utcnow

ANCHOR_FILE_ENV = "MEDANNOT_AUDIT_ANCHOR_FILE"  # the file 'medannot audit anchor --output' appends to
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_CASE = re.compile(r"^case:(\d+)$")


class FilterError(MedAnnotError):
    """A filter of the audit page is malformed (shown as a 400 page)."""


@dataclass(frozen=True)
class TrailFilter:
    actor: str = ""
    action: str = ""  # exact, or a prefix ending in "*" ("task.*")
    entity: str = ""  # exact ("task:12"), or "case:N": the case and its slots, reads and review rounds
    since: date | None = None  # first UTC day shown
    until: date | None = None  # last UTC day shown

    @staticmethod
    def parse(actor: str, action: str, entity: str, since: str, until: str) -> TrailFilter:
        def day(text: str, name: str) -> date | None:
            if not text.strip():
                return None
            try:
                return date.fromisoformat(text.strip())
            except ValueError:
                raise FilterError(f"{name} {text!r} is not a date: use YYYY-MM-DD (UTC)") from None

        found = TrailFilter(actor.strip(), action.strip(), entity.strip(), day(since, "from"), day(until, "to"))
        if found.since and found.until and found.since > found.until:
            raise FilterError(f"the date range {found.since} .. {found.until} is empty: 'from' comes after 'to'")
        return found

    def query(self) -> dict[str, str]:
        """The filter as the page's query parameters (for the paging links)."""
        values = {"actor": self.actor, "action": self.action, "entity": self.entity,
                  "since": self.since.isoformat() if self.since else "",
                  "until": self.until.isoformat() if self.until else ""}
        return {k: v for k, v in values.items() if v}


def case_entities(session: Session, case_id: int) -> list[str]:
    """The audit entities of a case: the case, its slots, its reads and its review rounds (three queries)."""
    tasks = list(session.scalars(select(Task.id).where(Task.case_id == case_id)))
    reads = list(session.scalars(select(Submission.id).where(Submission.task_id.in_(tasks or [-1]))))
    reviews = list(session.scalars(select(Review.id).where(Review.case_id == case_id)))
    return [f"case:{case_id}", *(f"task:{t}" for t in tasks), *(f"submission:{s}" for s in reads),
            *(f"review:{r}{part}" for r in reviews for part in ("", ":consensus", ":edited"))]


def _filtered(session: Session, chosen: TrailFilter, query: Select) -> Select:  # type: ignore[type-arg]
    if chosen.actor:
        query = query.where(AuditRecord.user == chosen.actor)
    if chosen.action.endswith("*"):
        prefix = chosen.action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(AuditRecord.action.like(prefix + "%", escape="\\"))
    elif chosen.action:
        query = query.where(AuditRecord.action == chosen.action)
    if chosen.entity:
        case = _CASE.match(chosen.entity)
        query = query.where(AuditRecord.entity.in_(case_entities(session, int(case.group(1)))) if case
                            else AuditRecord.entity == chosen.entity)
    # record times are ISO 8601 UTC text ("2026-12-03T10:12:00.123456Z"): text order is time order
    if chosen.since:
        query = query.where(AuditRecord.time >= chosen.since.isoformat())
    if chosen.until:
        query = query.where(AuditRecord.time < (chosen.until + timedelta(days=1)).isoformat())
    return query


@dataclass(frozen=True)
class TrailPage:
    records: list[AuditRecord]  # newest first
    matching: int  # records under the filter, on every page
    newer: int | None  # "after" for the page of newer records, None on the newest page
    older: int | None  # "before" for the page of older records, None on the oldest page


def trail_page(session: Session, chosen: TrailFilter, before: int | None = None, after: int | None = None,
               limit: int = PAGE_SIZE) -> TrailPage:
    """At most ``limit`` records under the filter, newest first: the newest ones, those just older than
    sequence number ``before``, or those just newer than ``after`` (three queries, each bounded by ``limit``
    except the count)."""
    base = _filtered(session, chosen, select(AuditRecord))
    if after is not None:
        rows = list(session.scalars(base.where(AuditRecord.seq > after).order_by(AuditRecord.seq)
                                    .limit(limit + 1)))
        more_newer = len(rows) > limit
        rows = rows[:limit][::-1]
        more_older = session.scalar(_filtered(session, chosen, select(AuditRecord.seq))
                                    .where(AuditRecord.seq <= after).limit(1)) is not None
    else:
        query = base.where(AuditRecord.seq < before) if before is not None else base
        rows = list(session.scalars(query.order_by(AuditRecord.seq.desc()).limit(limit + 1)))
        more_older = len(rows) > limit
        rows = rows[:limit]
        more_newer = before is not None and session.scalar(
            _filtered(session, chosen, select(AuditRecord.seq)).where(AuditRecord.seq >= before).limit(1)) is not None
    matching = session.scalar(_filtered(session, chosen, select(func.count()).select_from(AuditRecord))) or 0
    return TrailPage(rows, int(matching), rows[0].seq if rows and more_newer else None,
                     rows[-1].seq if rows and more_older else None)


@dataclass(frozen=True)
class Verification:
    """What ``medannot audit verify`` said of the trail at ``checked_at``, and the anchors it was checked against."""

    records: int
    intact: bool
    message: str
    anchor_file: str | None
    anchors: int
    last_anchor: AuditAnchor | None
    anchor_problem: str | None  # the anchor file cannot be read
    checked_at: datetime = field(default_factory=utcnow)


# The last verification of this process, with the trail's head and the anchor file's state it was made for.
# Checking a long trail takes seconds (100,000 records: about 4 s), so a page view within RECHECK_SECONDS of it
# reuses it while nothing was appended and the anchor file is unchanged; "verify now" always checks again.
RECHECK_SECONDS = 60
_last: dict[str, tuple[tuple[object, ...], Verification]] = {}
_last_lock = threading.Lock()


def _state(session: Session) -> tuple[object, ...]:
    head = session.execute(select(func.count(), func.max(AuditRecord.seq)).select_from(AuditRecord)).one()
    digest = session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == head[1])) if head[1] else None
    path = os.environ.get(ANCHOR_FILE_ENV, "").strip()
    try:
        stat = os.stat(path) if path else None
        anchor_state: object = (stat.st_size, stat.st_mtime_ns) if stat else None
    except OSError:
        anchor_state = "absent"
    return (session.get_bind().url.render_as_string(hide_password=True), head[0], head[1], digest, path,
            anchor_state, audit_key())


def current_verification(session: Session, now: bool = False) -> Verification:
    """The trail's verification: made again when ``now``, when the last one is older than RECHECK_SECONDS, or
    when records were appended or the anchor file changed since."""
    state = _state(session)
    with _last_lock:
        kept = _last.get("trail")
    if (not now and kept is not None and kept[0] == state
            and (utcnow() - kept[1].checked_at).total_seconds() < RECHECK_SECONDS):
        return kept[1]
    found = verify_trail(session)
    with _last_lock:
        _last["trail"] = (state, found)
    return found


def _stream(session: Session) -> Iterator[AuditEntry]:
    query = select(AuditRecord.seq, AuditRecord.time, AuditRecord.user, AuditRecord.action, AuditRecord.entity,
                   AuditRecord.old_value, AuditRecord.new_value, AuditRecord.reason, AuditRecord.prev_hash,
                   AuditRecord.hash).order_by(AuditRecord.seq).execution_options(yield_per=2000)
    for r in session.execute(query):
        yield AuditEntry(r.seq, r.time, r.user, r.action, r.entity, r.old_value, r.new_value, r.reason, r.prev_hash,
                         r.hash)


def verify_trail(session: Session) -> Verification:
    """Check the whole chain as ``audit verify`` does, reading it in batches (never all of it at once): each
    record's hash and link, then the anchors of ``MEDANNOT_AUDIT_ANCHOR_FILE``, then the seals when the server
    has an audit key."""
    path = os.environ.get(ANCHOR_FILE_ENV, "").strip() or None
    anchors: list[AuditAnchor] = []
    anchor_problem = None
    if path:
        try:
            anchors = read_anchors(path)
        except MedAnnotError as exc:
            anchor_problem = str(exc)
    wanted = {a.seq for a in anchors}
    kept: list[AuditEntry] = []  # the anchored records and the last one: all check_anchors needs
    last: list[AuditEntry] = []

    def watched() -> Iterator[AuditEntry]:
        for entry in _stream(session):
            if entry.seq in wanted:
                kept.append(entry)
            last[:] = [entry]
            yield entry

    count, problem = verify_chain(watched())
    if problem is None and anchors:
        problem = check_anchors(kept + last, anchors)
    last_anchor = max(anchors, key=lambda a: (a.seq, a.time)) if anchors else None
    if problem is not None:
        return Verification(count, False, f"audit trail broken at {problem} ({count} records read)", path,
                            len(anchors), last_anchor, anchor_problem)
    key = audit_key()
    if key:
        sealed, before, seal_problem = check_seals(session, key)
        if seal_problem is not None:
            return Verification(count, False, f"audit trail broken at {seal_problem}", path, len(anchors),
                                last_anchor, anchor_problem)
        seals = f"; {sealed} record(s) sealed with the audit key" + (f" ({before} older ones unsealed)"
                                                                      if before else "")
    else:
        seals = f"; no audit key ({KEY_FILE_ENV} unset): records are not sealed"
    held = f"; {len(anchors)} anchor(s) hold" if anchors else ""
    return Verification(count, True, f"audit trail intact: {count} records, hash chain verified{held}{seals}", path,
                        len(anchors), last_anchor, anchor_problem)
