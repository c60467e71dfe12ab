"""The review stage: a case whose reads are all in enters review; the server measures agreement and builds the
consensus (medannot.review), then a reviewer claims the review under a lease and decides.

Blinding: a review (and with it any reader's result) exists only once every read of the case is in; only
reviewers and admins see it. A reviewer never gets a case they read themselves. Decisions are idempotent per
(reviewer, Idempotency-Key) and audited.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from medannot.errors import MedAnnotError
from medannot.server.audit import append_audit
from medannot.server.config import DEFAULT_MAX_UPLOAD_BYTES
from medannot.server.db import transaction
from medannot.server.models import (
    REVIEW_DECIDED, REVIEW_FAILED, REVIEW_LEASED, REVIEW_OPEN, REVIEW_PENDING, REVIEW_RETURNED, TASK_RETURNED,
    TASK_SUBMITTED, Case, GuidelineVersion, Review, ReviewDecision, ReviewMetric, Submission, Task, User, utcnow,
)
from medannot.server.queue import LeaseError, lease_digest, lease_matches, new_lease
from medannot.server.storage import ObjectStore

logger = logging.getLogger(__name__)

ACTIONS = ("accept", "consensus", "edited", "return")
CONSENSUS = "consensus"  # the name of the consensus in metric rows (reads are named by submission id)
GOLD = "gold"  # a gold case's reference SEG in metric rows


class ReviewNotFound(MedAnnotError):
    """No such review."""


class NotInReview(MedAnnotError):
    """The case is not (or no longer) in review: its reads are not all in, or it was decided or returned."""


class ReviewRefused(MedAnnotError):
    """The decision or access is not allowed to this user (own read, blinding)."""


class DecisionRejected(MedAnnotError):
    """The decision names something that is not part of this review (a submission, a missing consensus)."""


def latest_submissions(session: Session, case_id: int) -> dict[int, Submission]:
    """The newest submission of each task (slot) of a case, by task id."""
    latest: dict[int, Submission] = {}
    rows = session.scalars(select(Submission).join(Task, Task.id == Submission.task_id)
                           .where(Task.case_id == case_id).order_by(Submission.id))
    for submission in rows:
        latest[submission.task_id] = submission
    return latest


def current_review(session: Session, case_id: int) -> Review | None:
    return session.scalar(select(Review).where(Review.case_id == case_id).order_by(Review.round.desc()).limit(1))


def open_review_if_complete(session: Session, task: Task) -> Review | None:
    """In the submit's transaction: when every slot of the task's case is submitted, start a review round
    (pending until :func:`prepare_review` has measured it)."""
    tasks = session.scalars(select(Task).where(Task.case_id == task.case_id)).all()
    if any(t.status != TASK_SUBMITTED for t in tasks):
        return None
    last = current_review(session, task.case_id)
    if last is not None and last.status != REVIEW_RETURNED:
        return None
    from medannot.server.projects import current_guideline, get_project

    project = get_project(session, task.project_id)
    policy = current_guideline(session, project).review
    reads = latest_submissions(session, task.case_id)
    review = Review(project_id=task.project_id, case_id=task.case_id, round=(last.round + 1) if last else 1,
                    status=REVIEW_PENDING, submission_ids=json.dumps(sorted(s.id for s in reads.values())),
                    consensus_method=policy.consensus if len(reads) > 1 else "none", created_at=utcnow())
    session.add(review)
    session.flush()
    append_audit(session, None, "review.start", f"review:{review.id}", None,
                 {"case": task.case_id, "round": review.round, "submissions": json.loads(review.submission_ids),
                  "consensus": review.consensus_method})
    return review


def in_active_review(session: Session, case_id: int) -> Review | None:
    """The case's review round unless it was returned (then the case is back to reading)."""
    last = current_review(session, case_id)
    return last if last is not None and last.status != REVIEW_RETURNED else None


@dataclass(frozen=True)
class _Inputs:
    case_key: str
    source: str
    method: str
    submissions: list[tuple[int, str]]  # (submission id, seg sha256)
    guideline_yaml: str
    gold: tuple[str, str] | None = None  # a gold case's reference SEG (path, sha256 at import)


def _inputs(session: Session, review: Review) -> _Inputs:
    case = session.get(Case, review.case_id)
    assert case is not None
    ids = json.loads(review.submission_ids)
    subs = [session.get(Submission, i) for i in ids]
    version = session.scalar(select(GuidelineVersion).where(GuidelineVersion.project_id == review.project_id,
                                                            GuidelineVersion.version == subs[0].guideline_version))
    assert version is not None
    return _Inputs(case.case_key, case.source, review.consensus_method,
                   [(s.id, s.seg_sha256) for s in subs if s is not None], version.yaml_text,
                   (case.gold_path, case.gold_sha256) if case.gold_path and case.gold_sha256 else None)


def prepare_review(factory: sessionmaker[Session], store: ObjectStore, review_id: int) -> Review:
    """Measure a pending review (per segment: every reader pair and each reader vs the consensus) and build its
    consensus SEG + SR; the work runs outside any transaction. A failure is stored on the review (status failed,
    the error text) and audited, never raised: the submission that triggered it stands."""
    with transaction(factory) as session:
        review = session.get(Review, review_id)
        if review is None or review.status != REVIEW_PENDING:
            raise ReviewNotFound(f"no pending review {review_id}")
        inputs = _inputs(session, review)
    workdir = Path(tempfile.mkdtemp(prefix="medannot-review-"))
    try:
        metrics, consensus, misses = _measure(store, inputs, workdir)
    except Exception as exc:  # noqa: BLE001 - stored and audited; an admin sees why
        if isinstance(exc, MedAnnotError):  # the inputs cannot be measured (say a cine without patient geometry)
            logger.warning("review %s of case %s could not be measured: %s", review_id, inputs.case_key, exc)
        else:
            logger.exception("review %s of case %s could not be measured", review_id, inputs.case_key)
        with transaction(factory) as session:
            review = session.get(Review, review_id)
            assert review is not None
            review.status, review.error = REVIEW_FAILED, f"{type(exc).__name__}: {exc}"
            append_audit(session, None, "review.failed", f"review:{review.id}", {"status": REVIEW_PENDING},
                         {"status": REVIEW_FAILED}, review.error)
            return review
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    from medannot.guideline import parse_guideline

    policy = parse_guideline(inputs.guideline_yaml.encode("utf-8")).review
    with transaction(factory) as session:
        review = session.get(Review, review_id)
        assert review is not None
        session.add_all(ReviewMetric(review_id=review.id, **row) for row in metrics)
        if consensus is not None:
            review.consensus_seg_sha256, review.consensus_sr_sha256, review.consensus_seg_uid = consensus
        review.disagreement = json.dumps(misses)
        automatic = policy.adjudication == "on_disagreement" and not misses and consensus is not None
        review.status = REVIEW_DECIDED if automatic else REVIEW_OPEN
        append_audit(session, None, "review.open", f"review:{review.id}", {"status": REVIEW_PENDING},
                     {"status": review.status, "metrics": len(metrics), "disagreement": misses,
                      "consensus_seg_sha256": review.consensus_seg_sha256})
        if automatic:
            review.decided_at = utcnow()
            append_audit(session, None, "review.decide", f"review:{review.id}", {"status": REVIEW_OPEN},
                         {"status": REVIEW_DECIDED, "action": "consensus"},
                         "agreement within every threshold (adjudication: on_disagreement)")
        return review


def retry_review(factory: sessionmaker[Session], store: ObjectStore, review_id: int, actor: str) -> Review:
    """Measure a failed review round again (say the PACS was down); audited."""
    with transaction(factory) as session:
        review = get_review(session, review_id, lock=True)
        if review.status != REVIEW_FAILED:
            raise NotInReview(f"review task {review_id} is {review.status}; only a failed round is measured again")
        old_error, review.status, review.error = review.error, REVIEW_PENDING, None
        append_audit(session, actor, "review.retry", f"review:{review.id}", {"status": REVIEW_FAILED,
                                                                            "error": old_error},
                     {"status": REVIEW_PENDING})
    return prepare_review(factory, store, review_id)


def _measure(store: ObjectStore, inputs: _Inputs, workdir: Path
             ) -> tuple[list[dict[str, object]], tuple[str, str, str] | None, list[str]]:
    from medannot.guideline import parse_guideline
    from medannot.imaging import load_source
    from medannot.review.agreement import agreement_table
    from medannot.review.export import export_consensus
    from medannot.review.reads import load_reads, segment_names
    from medannot.server import pacs

    guideline = parse_guideline(inputs.guideline_yaml.encode("utf-8"), origin=f"case {inputs.case_key} guideline")
    files = pacs.fetch_series(pacs.parse_source(inputs.source), workdir / "source",
                              pacs.DicomWebSettings.from_env())
    source = load_source(files[0].parent)
    reads = load_reads([store.path_of(sha) for _, sha in inputs.submissions], source)
    names = [str(sid) for sid, _ in inputs.submissions]
    by_name = {name: read.masks for name, read in zip(names, reads)}
    consensus = None
    pairs = list(combinations(names, 2))
    if inputs.method != "none" and len(reads) > 1:
        made = export_consensus(reads, source, guideline, inputs.method, workdir / "consensus", names=names)
        seg_bytes, sr_bytes = Path(made.result.seg_path).read_bytes(), Path(made.result.sr_path).read_bytes()
        seg_uid = str(dcmread(made.result.seg_path, stop_before_pixels=True).SOPInstanceUID)
        consensus = (store.put(seg_bytes), store.put(sr_bytes), seg_uid)
        by_name[CONSENSUS] = {c.segment: c.mask for c in made.segments}
        pairs += [(name, CONSENSUS) for name in names]
    if inputs.gold is not None:  # a gold case: every read (and the consensus) against the reference
        by_name[GOLD] = _gold_read(inputs, source).masks
        pairs += [(name, GOLD) for name in names] + ([(CONSENSUS, GOLD)] if CONSENSUS in by_name else [])
    rows: list[dict[str, object]] = []
    misses: list[str] = []
    for segment in segment_names(reads):
        threshold = guideline.review.threshold(segment)
        for row in agreement_table(by_name, [segment], threshold.nsd_tolerance_mm, pairs):
            ag = row.agreement
            failed = (threshold.failures(ag.dice, ag.hd95_mm, ag.nsd)
                      if CONSENSUS not in (row.a, row.b) and GOLD not in (row.a, row.b) else [])
            misses += [f"{segment}, submissions {row.a} and {row.b}: {text}" for text in failed]
            rows.append({"segment": segment, "a": row.a, "b": row.b, "dice": ag.dice, "hd95_mm": ag.hd95_mm,
                         "nsd": ag.nsd, "tolerance_mm": ag.tolerance_mm, "volume_a_ml": ag.volume_a_ml,
                         "volume_b_ml": ag.volume_b_ml, "volume_difference_ml": ag.volume_difference_ml,
                         "note": ag.note, "below_threshold": bool(failed)})
    return rows, consensus, misses


def _gold_read(inputs: _Inputs, source: object):  # type: ignore[no-untyped-def]
    """The gold case's reference SEG, read onto the source; refused when the file changed since import."""
    import hashlib

    from medannot.errors import DicomSegError
    from medannot.review.reads import load_reads

    assert inputs.gold is not None
    path, sha = inputs.gold
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DicomSegError(f"case {inputs.case_key}: gold reference {path} cannot be read ({exc.strerror or exc})")
    if hashlib.sha256(data).hexdigest() != sha:
        raise DicomSegError(f"case {inputs.case_key}: gold reference {path} changed since it was imported (sha256 "
                            f"{sha[:12]}...); import the case again with the reference you mean")
    return load_reads([Path(path)], source)[0]  # type: ignore[arg-type]


def _readers_of(session: Session, case_id: int) -> set[int]:
    """Everyone who holds or held a slot of the case, or submitted a read of it."""
    holders = set(session.scalars(select(Task.reader_id).where(Task.case_id == case_id, Task.reader_id.is_not(None))))
    authors = set(session.scalars(select(Submission.user_id).join(Task, Task.id == Submission.task_id)
                                  .where(Task.case_id == case_id)))
    return {int(u) for u in holders | authors if u is not None}


def expire_review_leases(session: Session, project_id: int, now: datetime) -> int:
    query = select(Review).where(Review.project_id == project_id, Review.status == REVIEW_LEASED,
                                 Review.lease_expires_at < now)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    expired = session.scalars(query).all()
    for review in expired:
        holder = session.get(User, review.reviewer_id) if review.reviewer_id else None
        append_audit(session, None, "review.lease.expire", f"review:{review.id}",
                     {"status": REVIEW_LEASED, "reviewer": holder.username if holder else None},
                     {"status": REVIEW_OPEN}, "lease expired")
        review.status, review.reviewer_id, review.lease_sha256, review.lease_expires_at = REVIEW_OPEN, None, None, None
    return len(expired)


def claim_next_review(session: Session, user: User, project_id: int,
                      lease_seconds: int) -> tuple[Review, str] | None:
    """Give ``user`` a leased review in the project and its lease token: the one they hold (with a new token, as
    only the digest is stored), else the oldest open review of a case they did not read. None when nothing is
    left for them."""
    now = utcnow()
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(select(User.id).where(User.id == user.id).with_for_update())
    expire_review_leases(session, project_id, now)
    held = session.scalar(select(Review).where(Review.project_id == project_id, Review.status == REVIEW_LEASED,
                                               Review.reviewer_id == user.id).limit(1))
    if held is not None:
        token, held.lease_sha256 = new_lease()
        held.lease_expires_at = now + timedelta(seconds=lease_seconds)
        append_audit(session, user.username, "review.claim", f"review:{held.id}", {"status": REVIEW_LEASED},
                     {"status": REVIEW_LEASED, "reviewer": user.username, "lease_expires_at": held.lease_expires_at},
                     "claimed again: a new lease token replaces the old one")
        return held, token
    read_slot = exists().where(and_(Task.case_id == Review.case_id, Task.reader_id == user.id))
    authored = exists().where(and_(Task.case_id == Review.case_id, Submission.task_id == Task.id,
                                   Submission.user_id == user.id))
    query = (select(Review).where(Review.project_id == project_id, Review.status == REVIEW_OPEN, ~read_slot,
                                  ~authored).order_by(Review.id).limit(1))
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Review)
    review = session.scalar(query)
    if review is None:
        return None
    review.status, review.reviewer_id = REVIEW_LEASED, user.id
    token, review.lease_sha256 = new_lease()
    review.lease_expires_at = now + timedelta(seconds=lease_seconds)
    append_audit(session, user.username, "review.claim", f"review:{review.id}", {"status": REVIEW_OPEN},
                 {"status": REVIEW_LEASED, "reviewer": user.username, "lease_expires_at": review.lease_expires_at})
    return review, token


def get_review(session: Session, review_id: int, lock: bool = False) -> Review:
    query = select(Review).where(Review.id == review_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    review = session.scalar(query)
    if review is None:
        raise ReviewNotFound(f"no review task {review_id}; list them with 'medannot client reviews PROJECT_ID'")
    return review


def _case_key(session: Session, review: Review) -> str:
    case = session.get(Case, review.case_id)
    return case.case_key if case else "?"


def _review_not_held(review_id: int) -> LeaseError:
    return LeaseError(f"review task {review_id}: this lease token is not (or no longer) valid; claim the review "
                      "again with 'medannot client review next'")


def held_review(session: Session, user: User, review_id: int, lease_token: str | None) -> Review:
    """The review, if it is in review and ``user`` holds its lease with this token (not expired). A review that
    does not exist and one that is not the caller's get the same answer (ids cannot be probed)."""
    try:
        review = get_review(session, review_id, lock=True)
    except ReviewNotFound:
        raise _review_not_held(review_id) from None
    if review.reviewer_id != user.id:
        raise _review_not_held(review_id)
    if review.status not in (REVIEW_OPEN, REVIEW_LEASED):
        raise NotInReview(f"review task {review_id} (case {_case_key(session, review)}) is {review.status}, not in "
                          "review; nothing was stored")
    if not lease_matches(review.lease_sha256, lease_token):
        raise _review_not_held(review_id)
    if review.status != REVIEW_LEASED or review.lease_expires_at is None or review.lease_expires_at <= utcnow():
        raise LeaseError(f"review task {review_id}: the lease expired; claim the review again")
    return review


@dataclass(frozen=True)
class EditedUpload:
    """A reviewer's edited segmentation, read and stored before the decision's transaction."""

    seg_sha256: str
    sr_sha256: str
    seg_uid: str
    series_uids: set[str]
    guideline: dict[str, str | None]
    edited_from_uid: str | None


def parse_edited(store: ObjectStore, seg_bytes: bytes | BinaryIO, sr_bytes: bytes | BinaryIO,
                 max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> EditedUpload:
    """Read an edited SEG + SR (as a reader's upload is read) and the SEG it says it was edited from (the SR's
    "replaces" item, written by ``export_segmentation(replaces=...)``), then store both files."""
    import re

    from medannot.dicomseg import codes
    from medannot.dicomseg.reader import _key, parse_sr
    from medannot.server.submissions import SubmissionRejected, parse_upload

    upload = parse_upload(seg_bytes, sr_bytes, max_bytes)  # bounded: a deflated file cannot inflate past the cap
    assert upload.seg is not None and upload.sr is not None
    seg = upload.seg
    try:
        root = parse_sr(upload.sr)["root"]
    except Exception as exc:  # noqa: BLE001 - an unreadable upload is the uploader's problem (422)
        raise SubmissionRejected(f"the edited upload is not a readable SEG + SR ({type(exc).__name__}: {exc})") from exc
    found = root.get(_key(codes.REPLACES_SEG))
    if not found:
        match = re.search(r"replaces SEG ([0-9.]+)", str(seg.get("DerivationDescription", "")))
        found = match[1] if match else None
    seg_sha, sr_sha = (store.put_file(io.BytesIO(data) if isinstance(data, bytes) else data)[0]
                       for data in (seg_bytes, sr_bytes))
    return EditedUpload(seg_sha, sr_sha, upload.seg_uid, upload.series_uids, upload.guideline,
                        str(found) if found else None)


@dataclass(frozen=True)
class DecisionResult:
    decision: ReviewDecision
    replayed: bool


def _previous_decision(session: Session, user: User, review_id: int, lease_token: str | None,
                       idempotency_key: str) -> ReviewDecision | None:
    """The decision this Idempotency-Key already made, if any: a replay must be for the same review and present
    the lease the decision was made with (the lease itself ended with the decision)."""
    previous = session.scalar(select(ReviewDecision).where(ReviewDecision.user_id == user.id,
                                                           ReviewDecision.idempotency_key == idempotency_key))
    if previous is None:
        return None
    if previous.review_id != review_id:
        raise DecisionRejected(f"Idempotency-Key {idempotency_key!r} was already used for review task "
                               f"{previous.review_id}; use a new key for each decision")
    if previous.lease_sha256 is not None and not lease_matches(previous.lease_sha256, lease_token):
        raise _review_not_held(review_id)
    return previous


def _same_decision(session: Session, previous: ReviewDecision, idempotency_key: str, action: str,
                   submission_id: int | None, reason: str | None, edited: EditedUpload | None) -> None:
    """A replay must repeat the decision it replays; the same key with another decision is refused (422, as the
    IETF Idempotency-Key draft asks) rather than answered with the first one as if it had been made."""
    asked: dict[str, object] = {"action": action, "reason": (reason or "").strip() or None}
    made: dict[str, object] = {"action": previous.action, "reason": (previous.reason or "").strip() or None}
    if action in ("accept", "return"):
        asked["submission"], made["submission"] = submission_id, previous.submission_id
    if action == "edited" and previous.action == "edited":
        review = session.get(Review, previous.review_id)
        asked["seg_sha256"] = edited.seg_sha256 if edited else None
        made["seg_sha256"] = review.edited_seg_sha256 if review else None
    differs = [name for name in asked if asked[name] != made.get(name)]
    if differs:
        raise DecisionRejected(f"Idempotency-Key {idempotency_key!r} was already used for decision "
                               f"{previous.id} on review task {previous.review_id} ({previous.action}); this "
                               f"request differs in {', '.join(differs)}; use a new key for a new decision")


def begin_decision(factory: sessionmaker[Session], user_id: int, review_id: int, lease_token: str | None,
                   idempotency_key: str) -> bool:
    """What is checked before an edited upload is read: a replay of a decision already made (True; its upload
    is then compared with the first one's), else the caller's lease on the review."""
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        if idempotency_key and _previous_decision(session, user, review_id, lease_token, idempotency_key):
            return True
        held_review(session, user, review_id, lease_token)
    return False


def decide(factory: sessionmaker[Session], user_id: int, review_id: int, lease_token: str | None,
           idempotency_key: str, action: str, submission_id: int | None = None,
           reason: str | None = None, edited: EditedUpload | None = None) -> DecisionResult:
    """Record a reviewer's decision once per (reviewer, Idempotency-Key): ``accept`` a reader's submission,
    ``consensus``, ``edited`` (the reviewer's own SEG + SR, referencing the read or consensus SEG it was edited
    from), or ``return`` a submission's slot to its reader with a reason (the old result is kept)."""
    if not idempotency_key or len(idempotency_key) > 128:
        raise DecisionRejected("an Idempotency-Key header (1-128 characters) is required for a decision")
    if action not in ACTIONS:
        raise DecisionRejected(f"decision {action!r} is not one of {', '.join(ACTIONS)}")
    with transaction(factory) as session:
        user = session.get(User, user_id)
        assert user is not None
        previous = _previous_decision(session, user, review_id, lease_token, idempotency_key)
        if previous is not None:
            _same_decision(session, previous, idempotency_key, action, submission_id, reason, edited)
            return DecisionResult(previous, True)
        review = held_review(session, user, review_id, lease_token)
        if user.id in _readers_of(session, review.case_id):
            raise ReviewRefused(f"review task {review_id}: you read case {_case_key(session, review)} yourself; "
                                "another reviewer must decide it")
        ids = json.loads(review.submission_ids)
        if action in ("accept", "return") and submission_id not in ids:
            raise DecisionRejected(f"submission {submission_id} is not one of the reads under review in task "
                                   f"{review_id} ({', '.join(map(str, ids))})")
        if action == "consensus" and review.consensus_seg_sha256 is None:
            raise DecisionRejected(f"review task {review_id} has no consensus (guideline review.consensus is "
                                   f"{review.consensus_method}); accept or return a submission")
        if action == "edited":
            _check_edited(session, review, edited)
        if action == "return" and not (reason or "").strip():
            raise DecisionRejected("returning a read needs --reason: the reader sees it when they get the task back")
        old = {"status": review.status}
        if action == "return":
            submission = session.get(Submission, submission_id)
            assert submission is not None
            task = session.get(Task, submission.task_id)
            assert task is not None
            task.status, task.lease_sha256, task.lease_expires_at = TASK_RETURNED, None, None
            task.reader_id = submission.user_id
            review.status = REVIEW_RETURNED
            append_audit(session, user.username, "task.return", f"task:{task.id}", {"status": TASK_SUBMITTED},
                         {"status": TASK_RETURNED, "reader_id": submission.user_id, "submission": submission.id},
                         reason)
        else:
            review.status = REVIEW_DECIDED
            if action == "edited":
                assert edited is not None
                review.edited_seg_sha256, review.edited_sr_sha256 = edited.seg_sha256, edited.sr_sha256
                review.edited_seg_uid, review.edited_from_uid = edited.seg_uid, edited.edited_from_uid
        review.lease_sha256, review.lease_expires_at, review.decided_at = None, None, utcnow()
        decision = ReviewDecision(review_id=review.id, user_id=user.id, action=action,
                                  submission_id=submission_id if action in ("accept", "return") else None,
                                  reason=reason, idempotency_key=idempotency_key,
                                  lease_sha256=lease_digest(lease_token or ""), created_at=utcnow())
        session.add(decision)
        session.flush()
        append_audit(session, user.username, "review.decide", f"review:{review.id}", old,
                     {"status": review.status, "action": action, "submission": decision.submission_id,
                      "decision": decision.id,
                      **({"edited_seg_sha256": review.edited_seg_sha256, "edited_seg_uid": review.edited_seg_uid,
                          "edited_from": review.edited_from_uid} if action == "edited" else {})}, reason)
        return DecisionResult(decision, False)


def _check_edited(session: Session, review: Review, edited: EditedUpload | None) -> None:
    from medannot.server.submissions import _check_content

    if edited is None:
        raise DecisionRejected("an edited decision needs the edited SEG and SR files")
    task = session.scalar(select(Task).where(Task.case_id == review.case_id).limit(1))
    assert task is not None
    _check_content(session, task, edited)  # type: ignore[arg-type] - the same series and guideline checks
    reads = {}
    for sid in json.loads(review.submission_ids):
        submission = session.get(Submission, sid)
        assert submission is not None
        reads[submission.seg_sop_uid] = f"submission {sid}"
    if review.consensus_seg_uid:
        reads[review.consensus_seg_uid] = "the consensus"
    if edited.edited_from_uid not in reads:
        raise DecisionRejected(f"the edited SEG references {edited.edited_from_uid or 'no SEG'} as what it was "
                               f"edited from, not one of review task {review.id}'s SEGs ({', '.join(reads)}); export "
                               "it with replaces= the reader's or the consensus SEG you edited")
    if edited.seg_uid in reads:
        raise DecisionRejected(f"the edited SEG has SOP Instance UID {edited.seg_uid}, the same as "
                               f"{reads[edited.seg_uid]}; an edit is a new SEG instance")


def return_reason(session: Session, task_id: int) -> str | None:
    """Why a reviewer returned this slot, while the returned read is still its newest (None otherwise)."""
    latest = session.scalar(select(Submission).where(Submission.task_id == task_id)
                            .order_by(Submission.id.desc()).limit(1))
    if latest is None:
        return None
    decision = session.scalar(select(ReviewDecision).where(ReviewDecision.action == "return",
                                                           ReviewDecision.submission_id == latest.id)
                              .order_by(ReviewDecision.id.desc()).limit(1))
    return decision.reason if decision else None


@dataclass(frozen=True)
class SignOff:
    """Where a review round stands on sign-off: the result its decision made (None while undecided), the
    signatures its guideline version requires (``review.signatures``) and those on the result's exact bytes."""

    result: dict[str, object] | None
    required: tuple[str, ...]
    signed: tuple[str, ...]

    @property
    def final(self) -> bool:
        return self.result is not None and set(self.required) <= set(self.signed)


@lru_cache(maxsize=64)
def _signatures_of_guideline(sha256: str, yaml_text: str) -> tuple[str, ...]:
    # a guideline version's text never changes (a change is a new version), so its parse is kept by its hash
    from medannot.guideline import parse_guideline

    return parse_guideline(yaml_text.encode("utf-8")).review.signatures


# the columns of a review that decide its sign-off: rows of these serve as well as Review objects
SIGN_OFF_COLUMNS = (Review.id, Review.project_id, Review.status, Review.submission_ids, Review.consensus_seg_sha256,
                    Review.edited_seg_sha256, Review.edited_from_uid)


def sign_offs(session: Session, reviews: Sequence[Review], project_id: int | None = None) -> dict[int, SignOff]:
    """The :class:`SignOff` of each review, by review id, in a fixed number of queries whatever their number (the
    dashboard asks it for every case of a project).

    ``reviews`` are Review objects or rows of :data:`SIGN_OFF_COLUMNS`. With ``project_id`` (every review is of
    that project) the queries select by project rather than by lists of thousands of ids, which the database
    driver would otherwise bind one by one.

    The result is what the round's last decision chose: the consensus (also when it was decided automatically,
    with no decision row), the reviewer's edited SEG, or one reader's submission.
    """
    from medannot.server.models import Signature

    ids = [r.id for r in reviews]
    if not ids:
        return {}
    first_reads = {r.id: json.loads(r.submission_ids)[0] for r in reviews}
    decisions = select(ReviewDecision.review_id, ReviewDecision.action, ReviewDecision.submission_id)
    reads_query = select(Submission.id, Submission.seg_sha256, Submission.guideline_version)
    sig_columns = (Signature.review_id, Signature.submission_id, Signature.subject, Signature.file_sha256,
                   Signature.meaning)
    if project_id is not None:  # joins on primary keys: a superset of what is needed, from a few fast queries
        decisions = decisions.join(Review, Review.id == ReviewDecision.review_id).where(Review.project_id == project_id)
        reads_query = reads_query.join(Task, Task.id == Submission.task_id).where(Task.project_id == project_id)
    else:
        decisions = decisions.where(ReviewDecision.review_id.in_(ids))
    last = {d.review_id: d for d in session.execute(decisions.order_by(ReviewDecision.id))}  # each round's last
    wanted = set(first_reads.values()) | {d.submission_id for d in last.values() if d.action == "accept"}
    if project_id is None:
        reads_query = reads_query.where(Submission.id.in_(wanted - {None}))
    reads = {row.id: row for row in session.execute(reads_query)}
    versions = {(v.project_id, v.version): v for v in session.scalars(
        select(GuidelineVersion).where(GuidelineVersion.project_id.in_({r.project_id for r in reviews})))}
    accepted = [d.submission_id for d in last.values() if d.action == "accept" and d.submission_id is not None]
    if project_id is not None:
        signatures = [*session.execute(select(*sig_columns).join(Review, Review.id == Signature.review_id)
                                       .where(Review.project_id == project_id)),
                      *session.execute(select(*sig_columns).join(Submission, Submission.id == Signature.submission_id)
                                       .join(Task, Task.id == Submission.task_id).where(Task.project_id == project_id))]
    else:
        signatures = list(session.execute(select(*sig_columns).where(
            or_(Signature.review_id.in_(ids), Signature.submission_id.in_(accepted or [-1])))))
    by_review: dict[int, list[tuple[str, str, str]]] = {}
    by_submission: dict[int, list[tuple[str, str]]] = {}
    for sig in signatures:
        if sig.review_id is not None:
            by_review.setdefault(sig.review_id, []).append((sig.subject, sig.file_sha256, sig.meaning))
        if sig.submission_id is not None:
            by_submission.setdefault(sig.submission_id, []).append((sig.file_sha256, sig.meaning))
    found: dict[int, SignOff] = {}
    for review in reviews:
        version = versions[(review.project_id, reads[first_reads[review.id]].guideline_version)]
        required = _signatures_of_guideline(version.sha256, version.yaml_text)
        result: dict[str, object] | None = None
        signed: set[str] = set()
        if review.status == REVIEW_DECIDED:
            decision = last.get(review.id)
            if decision is None or decision.action == "consensus":  # no decision row: decided automatically
                result = {"kind": "consensus", "review_id": review.id, "seg_sha256": review.consensus_seg_sha256}
            elif decision.action == "edited":
                result = {"kind": "edited", "review_id": review.id, "seg_sha256": review.edited_seg_sha256,
                          "edited_from_uid": review.edited_from_uid}
            else:
                read = reads[decision.submission_id]  # type: ignore[index]
                result = {"kind": "submission", "submission_id": read.id, "seg_sha256": read.seg_sha256}
            if result["kind"] == "submission":
                signed = {meaning for sha, meaning in by_submission.get(int(result["submission_id"]), [])  # type: ignore[arg-type]
                          if sha == result["seg_sha256"]}
            else:
                signed = {meaning for subject, sha, meaning in by_review.get(review.id, [])
                          if subject == result["kind"] and sha == result["seg_sha256"]}
        found[review.id] = SignOff(result, tuple(required), tuple(sorted(signed)))
    return found


def review_summary(session: Session, review: Review) -> dict[str, object]:
    """A review round as listed: its state and, once decided, its result and whether the signatures the guideline
    requires (``review.signatures``) are on the result's exact bytes (``final``)."""
    reviewer = session.get(User, review.reviewer_id) if review.reviewer_id else None
    sign_off = sign_offs(session, [review])[review.id]
    return {"review_id": review.id, "case_id": _case_key(session, review), "round": review.round,
            "status": review.status, "consensus_method": review.consensus_method,
            "disagreement": json.loads(review.disagreement) if review.disagreement else None,
            "reviewer": reviewer.username if reviewer else None, "error": review.error, "result": sign_off.result,
            "signatures_required": list(sign_off.required), "signatures": list(sign_off.signed),
            "final": sign_off.final}


def review_detail(session: Session, review: Review) -> dict[str, object]:
    """Everything a reviewer sees of a review: the reads (who, which files), the metrics, the consensus, the
    decisions."""
    reads = []
    for sid in json.loads(review.submission_ids):
        submission = session.get(Submission, sid)
        assert submission is not None
        author = session.get(User, submission.user_id)
        task = session.get(Task, submission.task_id)
        reads.append({"submission_id": sid, "reader": author.username if author else None,
                      "slot": task.slot if task else None, "seg_sha256": submission.seg_sha256,
                      "sr_sha256": submission.sr_sha256, "seg_uid": submission.seg_sop_uid})
    metrics = [{"segment": m.segment, "a": m.a, "b": m.b, "dice": m.dice, "hd95_mm": m.hd95_mm, "nsd": m.nsd,
                "tolerance_mm": m.tolerance_mm, "volume_a_ml": m.volume_a_ml, "volume_b_ml": m.volume_b_ml,
                "volume_difference_ml": m.volume_difference_ml, "note": m.note,
                "below_threshold": bool(m.below_threshold)}
               for m in session.scalars(select(ReviewMetric).where(ReviewMetric.review_id == review.id)
                                        .order_by(ReviewMetric.id))]
    decisions = [{"decision_id": d.id, "action": d.action, "submission_id": d.submission_id, "reason": d.reason,
                  "by": (session.get(User, d.user_id) or User(username="?")).username}
                 for d in session.scalars(select(ReviewDecision).where(ReviewDecision.review_id == review.id))]
    consensus = None if review.consensus_seg_sha256 is None else {
        "seg_sha256": review.consensus_seg_sha256, "sr_sha256": review.consensus_sr_sha256,
        "seg_uid": review.consensus_seg_uid}
    edited = None if review.edited_seg_sha256 is None else {
        "seg_sha256": review.edited_seg_sha256, "sr_sha256": review.edited_sr_sha256,
        "seg_uid": review.edited_seg_uid, "edited_from_uid": review.edited_from_uid}
    return {**review_summary(session, review), "reads": reads, "metrics": metrics, "consensus": consensus,
            "edited": edited, "decisions": decisions}


def visible_submission(session: Session, user: User, submission: Submission) -> bool:
    """Blinding: an annotator sees only their own reads; a reviewer or admin sees a read once it is part of a
    review round (all reads of its case were in)."""
    if user.role == "annotator":
        return submission.user_id == user.id
    task = session.get(Task, submission.task_id)
    assert task is not None
    rounds = session.scalars(select(Review.submission_ids).where(Review.case_id == task.case_id))
    return any(submission.id in json.loads(ids) for ids in rounds)


def project_metric_rows(session: Session, project_id: int) -> list[dict[str, object]]:
    """The stored agreement of a project's cases, one row per case, segment and compared pair, for
    :func:`medannot.review.report.build_report`: the latest measured round of each case, reads named by their
    reader's user name (the consensus and a gold reference as "consensus" and "gold").

    Four queries whatever the number of cases (the dashboard's agreement page asks it on every view)."""
    cases = {c.id: c for c in session.execute(select(Case.id, Case.case_key, Case.gold_path)
                                               .where(Case.project_id == project_id))}
    latest: dict[int, tuple[int, str]] = {}  # case id -> (review id, its JSON list of reads) of the highest round
    for r in session.execute(select(Review.id, Review.case_id, Review.submission_ids)
                             .where(Review.project_id == project_id, Review.status != REVIEW_FAILED,
                                    Review.status != REVIEW_PENDING).order_by(Review.round)):
        latest[r.case_id] = (r.id, r.submission_ids)
    if not latest:
        return []
    read_ids = {sid for _, ids in latest.values() for sid in json.loads(ids)}
    authors = dict(session.execute(select(Submission.id, User.username).join(User, User.id == Submission.user_id)
                                   .where(Submission.id.in_(read_ids))).all())
    names = {review_id: {str(sid): authors.get(sid, str(sid)) for sid in json.loads(ids)}
             for review_id, ids in latest.values()}
    case_of = {review_id: case_id for case_id, (review_id, _) in latest.items()}
    metrics: dict[int, list[Any]] = {}
    for m in session.execute(select(ReviewMetric.review_id, ReviewMetric.segment, ReviewMetric.a, ReviewMetric.b,
                                    ReviewMetric.dice, ReviewMetric.hd95_mm, ReviewMetric.nsd,
                                    ReviewMetric.tolerance_mm, ReviewMetric.volume_a_ml, ReviewMetric.volume_b_ml)
                             .where(ReviewMetric.review_id.in_(list(case_of))).order_by(ReviewMetric.id)):
        metrics.setdefault(m.review_id, []).append(m)
    rows: list[dict[str, object]] = []
    for case_id in sorted(latest):
        case, review_id = cases[case_id], latest[case_id][0]
        for m in metrics.get(review_id, []):
            rows.append({"case": case.case_key, "gold_case": case.gold_path is not None, "segment": m.segment,
                         "a": names[review_id].get(m.a, m.a), "b": names[review_id].get(m.b, m.b), "dice": m.dice,
                         "hd95_mm": m.hd95_mm, "nsd": m.nsd, "tolerance_mm": m.tolerance_mm,
                         "volume_a_ml": m.volume_a_ml, "volume_b_ml": m.volume_b_ml})
    return rows
