"""Database tables of the task server (SQLAlchemy 2 ORM); the schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("admin", "annotator", "reviewer")
TASK_OPEN, TASK_LEASED, TASK_SUBMITTED = "open", "leased", "submitted"
TASK_RETURNED = "returned"  # sent back to its reader by a reviewer: only that reader can claim it again
# a review: computing its metrics and consensus, then open / leased to a reviewer, then decided (or returned, or
# failed when the metrics could not be computed)
REVIEW_PENDING, REVIEW_OPEN, REVIEW_LEASED = "pending", "open", "leased"
REVIEW_DECIDED, REVIEW_RETURNED, REVIEW_FAILED = "decided", "returned", "failed"
MEANINGS = ("authored", "reviewed", "approved")


def utcnow() -> datetime:
    """Naive UTC 'now' (SQLite keeps no time zone; every time in the database is UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # set: no login, no signing
    # the reader roster of the submission package: who this person is and why they may read
    printed_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    qualification: Mapped[str | None] = mapped_column(Text, nullable=True)
    credentials: Mapped[str | None] = mapped_column(Text, nullable=True)
    trained_on: Mapped[date | None] = mapped_column(Date, nullable=True)


class AuthToken(Base):
    __tablename__ = "auth_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_used_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    guideline_id: Mapped[str] = mapped_column(String(64))
    current_guideline_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    readers_per_case: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # the lab's archive final results are sent to (DICOMweb root); credentials stay in the server's environment
    results_dicomweb: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class GuidelineVersion(Base):
    __tablename__ = "guideline_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    guideline_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    yaml_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class GuidelineFile(Base):
    """A file a guideline version refers to (a reference image of its instructions), kept with the version."""

    __tablename__ = "guideline_files"
    __table_args__ = (UniqueConstraint("guideline_version_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guideline_version_id: Mapped[int] = mapped_column(ForeignKey("guideline_versions.id"))
    name: Mapped[str] = mapped_column(String(512))  # path relative to the guideline file, with "/"
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("project_id", "case_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    case_key: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(Text)
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    # a gold case: the reference SEG (never shown to readers) and its sha256 at import
    gold_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    gold_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # JSON list of the series' SOP Instance UIDs (None until known: a DICOMweb case before its first download)
    instance_uids: Mapped[str | None] = mapped_column(Text, nullable=True)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("case_id", "slot"), Index("ix_tasks_project_status", "project_id", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    slot: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=TASK_OPEN)
    reader_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    # the sha256 of the lease token the reader holds (the token itself is only ever in the claim's answer);
    # after submit it stays valid for corrections until lease_expires_at (the correction window)
    lease_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    seg_sha256: Mapped[str] = mapped_column(String(64))
    sr_sha256: Mapped[str] = mapped_column(String(64))
    seg_sop_uid: Mapped[str] = mapped_column(String(64))
    guideline_version: Mapped[str] = mapped_column(String(32))
    replaces_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[int] = mapped_column(Integer)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"))
    # the sha256 of the lease token the submit was made with: a replay must present the same lease
    lease_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditRecord(Base):
    __tablename__ = "audit_records"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(40))
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(128))
    old_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    new_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256 of ``hash`` under the server's audit key (None: written without a key, or before migration 0011)
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Review(Base):
    """One round of review of a case, made when all its reads are in (a returned case gets a new round later)."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("case_id", "round"), Index("ix_reviews_project_status", "project_id", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    submission_ids: Mapped[str] = mapped_column(Text)  # JSON list: the reads under review
    consensus_method: Mapped[str] = mapped_column(String(16))
    consensus_seg_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consensus_sr_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consensus_seg_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    disagreement: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of threshold misses
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # a reviewer's edited segmentation, when that is the decision (it references the SEG it was edited from)
    edited_seg_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edited_sr_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edited_seg_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edited_from_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    lease_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # sha256 of the reviewer's token
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ReviewMetric(Base):
    """Agreement of two reads (submission ids, or "consensus") on one segment."""

    __tablename__ = "review_metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), index=True)
    segment: Mapped[str] = mapped_column(String(64))
    a: Mapped[str] = mapped_column(String(32))
    b: Mapped[str] = mapped_column(String(32))
    dice: Mapped[float] = mapped_column(Float)
    hd95_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    nsd: Mapped[float] = mapped_column(Float)
    tolerance_mm: Mapped[float] = mapped_column(Float)
    volume_a_ml: Mapped[float | None] = mapped_column(Float, nullable=True)  # None for a cine (areas)
    volume_b_ml: Mapped[float | None] = mapped_column(Float, nullable=True)  # None for a cine (areas)
    volume_difference_ml: Mapped[float | None] = mapped_column(Float, nullable=True)  # None for a cine (areas)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    below_threshold: Mapped[bool] = mapped_column(Boolean, default=False)


class ReviewDecision(Base):
    """A reviewer's decision on a review: accept a submission, accept the consensus, or return a read."""

    __tablename__ = "review_decisions"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(16))  # accept | consensus | edited | return
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    lease_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a replay must present this lease
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Signature(Base):
    """An electronic signature: who (user and printed name), when (UTC), what it means, over which exact bytes."""

    __tablename__ = "signatures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"), nullable=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), nullable=True)
    subject: Mapped[str] = mapped_column(String(16))  # submission | consensus | edited (a review's)
    file_sha256: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str] = mapped_column(String(64))
    printed_name: Mapped[str] = mapped_column(String(256))
    meaning: Mapped[str] = mapped_column(String(16))
    signed_at: Mapped[datetime] = mapped_column(DateTime)
    # an "approved" signature: the SEG's SR reissued with VerificationFlag VERIFIED by this signer at this time
    verified_sr_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ArchiveSend(Base):
    """One final result file to send to the project's archive (STOW-RS), kept until the archive has it: sent only
    when the archive lists its SOP Instance UID and a WADO read-back matches byte for byte."""

    __tablename__ = "archive_outbox"
    __table_args__ = (UniqueConstraint("project_id", "sha256", "archive_url"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # seg | sr | verified-sr | consensus-seg | consensus-sr
    sha256: Mapped[str] = mapped_column(String(64))
    sop_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    archive_url: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))  # pending | sent
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ProjectMember(Base):
    """A user an admin made a member of a project: annotators claim and reviewers review only in their projects."""

    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    added_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
