"""How fast a project moves: when each case became final (the completions chart, cumulative per UTC day),
cases final per day over the last 7 and 30 days, and time per read (claim to submit) and per case (first claim to
final), as the projects page shows them."""

from __future__ import annotations

import io
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medannot.server.models import (
    REVIEW_DECIDED, TASK_SUBMITTED, Project, Review, Signature, Submission, Task, utcnow,
)
from medannot.server.web.progress import final_sign_offs

# pyplot keeps global state: one figure at a time per process (the routes run in a thread pool)
PLOT_LOCK = threading.Lock()
CHART_DAYS = 14  # the chart shows at least the last two weeks
TABLE_DAYS = 14  # the table beside the chart lists the last days on which cases became final


@dataclass(frozen=True)
class Spread:
    """Median and 90th percentile of durations (hours), over ``n`` of them; None when there are none."""

    n: int
    median_h: float | None
    p90_h: float | None

    @property
    def median_text(self) -> str:
        return duration_text(self.median_h)

    @property
    def p90_text(self) -> str:
        return duration_text(self.p90_h)


def duration_text(hours: float | None) -> str:
    """A duration as people read it: minutes under an hour, hours under two days, else days."""
    if hours is None:
        return "\u2013"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


@dataclass(frozen=True)
class Completions:
    """Cases becoming final per UTC day, from the first such day to today, with the running total."""

    days: tuple[date, ...]
    final: tuple[int, ...]  # cases that became final on each day
    cumulative: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def table(self) -> list[tuple[date, int, int]]:
        """The last ``TABLE_DAYS`` days on which a case became final, newest first: (day, that day, total)."""
        rows = [(d, n, c) for d, n, c in zip(self.days, self.final, self.cumulative) if n]
        return rows[::-1][:TABLE_DAYS]

    @property
    def days_with_completions(self) -> int:
        return sum(1 for n in self.final if n)


@dataclass(frozen=True)
class Activity:
    project_id: int
    completions: Completions
    last_7: int  # cases that became final in the last 7 x 24 hours
    last_30: int
    per_read: Spread  # a slot's last claim to its submit
    per_case: Spread  # a case's earliest claim on record to the moment it became final

    @property
    def per_day_7(self) -> float:
        return self.last_7 / 7

    @property
    def per_day_30(self) -> float:
        return self.last_30 / 30


def final_times(session: Session, project: Project) -> dict[int, datetime]:
    """When each final case of the project became final, by case id: the later of its round's decision and the
    first signature of each meaning its guideline requires on the result's exact bytes (the review module's own
    rule of "final", :func:`medannot.server.web.progress.final_sign_offs`, shared with the page's counts). A fixed
    number of queries whatever the number of cases."""
    offs = final_sign_offs(session, project.id)
    final = [r for r in session.execute(select(Review.id, Review.case_id, Review.decided_at, Review.created_at)
                                        .where(Review.project_id == project.id, Review.status == REVIEW_DECIDED))
             if r.id in offs]
    if not final:
        return {}
    signed: dict[tuple[str, int, str, str], datetime] = {}  # (on, id, sha256, meaning) -> its first signature
    columns = (Signature.review_id, Signature.submission_id, Signature.subject, Signature.file_sha256,
               Signature.meaning, Signature.signed_at)
    # every signature of the project, selected by joins (not by lists of thousands of ids); those not on a final
    # result are simply never looked up
    of_reviews = select(*columns).join(Review, Review.id == Signature.review_id).where(Review.project_id == project.id)
    of_reads = (select(*columns).join(Submission, Submission.id == Signature.submission_id)
                .join(Task, Task.id == Submission.task_id).where(Task.project_id == project.id))
    for sig in [*session.execute(of_reviews), *session.execute(of_reads)]:
        key = (("submission", sig.submission_id) if sig.submission_id is not None
               else (sig.subject, sig.review_id)) + (sig.file_sha256, sig.meaning)
        if key not in signed or sig.signed_at < signed[key]:
            signed[key] = sig.signed_at
    times = {}
    for review in final:
        off = offs[review.id]
        result = off.result
        assert result is not None
        on = (("submission", int(result["submission_id"])) if result["kind"] == "submission"  # type: ignore[arg-type]
              else (str(result["kind"]), review.id))
        moments = [signed[on + (str(result["seg_sha256"]), meaning)] for meaning in off.required]
        decided_at = review.decided_at or review.created_at
        times[review.case_id] = max([decided_at, *moments])
    return times


def _spread(hours: list[float]) -> Spread:
    if not hours:
        return Spread(0, None, None)
    median, p90 = np.percentile(np.asarray(hours, dtype=float), [50, 90])
    return Spread(len(hours), float(median), float(p90))


def completions(times: dict[int, datetime], today: date) -> Completions:
    if not times:
        return Completions((), (), ())
    per_day = Counter(t.date() for t in times.values())
    first = min(min(per_day), today - timedelta(days=CHART_DAYS - 1))  # a chart of at least two weeks
    days = tuple(first + timedelta(days=i) for i in range((max(today, max(per_day)) - first).days + 1))
    final = tuple(per_day.get(d, 0) for d in days)
    return Completions(days, final, tuple(int(c) for c in np.cumsum(final)))


def project_activity(session: Session, project: Project, now: datetime | None = None) -> Activity:
    """The project's completions, throughput and times per read and per case (a fixed number of queries)."""
    now = now or utcnow()
    times = final_times(session, project)
    reads = [(submitted - claimed).total_seconds() / 3600 for claimed, submitted in session.execute(
        select(Task.claimed_at, Task.submitted_at).where(Task.project_id == project.id,
                                                         Task.status == TASK_SUBMITTED,
                                                         Task.claimed_at.is_not(None),
                                                         Task.submitted_at.is_not(None)))]
    first_claims = dict(session.execute(select(Task.case_id, func.min(Task.claimed_at))
                                        .where(Task.project_id == project.id, Task.claimed_at.is_not(None))
                                        .group_by(Task.case_id)).all())
    cases = [(times[c] - first_claims[c]).total_seconds() / 3600 for c in times if c in first_claims]
    return Activity(project.id, completions(times, now.date()),
                    last_7=sum(1 for t in times.values() if t > now - timedelta(days=7)),
                    last_30=sum(1 for t in times.values() if t > now - timedelta(days=30)),
                    per_read=_spread(reads), per_case=_spread(cases))


@lru_cache(maxsize=32)
def completions_png(title: str, days: tuple[date, ...], final: tuple[int, ...]) -> bytes:
    """The completions chart as PNG: cases final per day (bars) and the running total (step line). Kept by its
    numbers, so a page view re-draws it only when a case became final or a day passed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    cumulative = np.cumsum(final)
    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(6.4, 2.6), dpi=100)
        try:
            # each day is the span [day, day + 1): its bar starts there, the running total steps up there
            daily = ax.twinx()
            daily.bar(days, final, width=0.85, align="edge", color="#9ecbff", label="final that day")
            daily.set_ylim(0, max(1, max(final)) * 1.6)
            daily.yaxis.get_major_locator().set_params(integer=True)
            daily.set_ylabel("per day", color="#3b78c2")
            ax.set_zorder(daily.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.step(days + (days[-1] + timedelta(days=1),), (*cumulative, cumulative[-1]), where="post",
                    color="#1a7f37", linewidth=2, label="final in all")
            ax.set_ylim(0, max(1, int(cumulative[-1])) * 1.3)
            ax.set_xlim(days[0], days[-1] + timedelta(days=1))
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
            ax.set_ylabel("final in all", color="#1a7f37")
            ax.set_title(f"{title}: cases final over time (UTC days)", fontsize=10)
            handles = ax.get_legend_handles_labels()[0] + daily.get_legend_handles_labels()[0]
            ax.legend(handles=handles, fontsize=8, loc="upper left")
            ax.grid(axis="y", alpha=0.3)
            fig.autofmt_xdate()
            fig.tight_layout()
            out = io.BytesIO()
            fig.savefig(out, format="png")
        finally:
            plt.close(fig)
    return out.getvalue()
