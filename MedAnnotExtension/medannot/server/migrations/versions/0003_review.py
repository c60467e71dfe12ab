"""Review stage: review rounds, their agreement metrics, reviewers' decisions, electronic signatures.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("submission_ids", sa.Text, nullable=False),
        sa.Column("consensus_method", sa.String(16), nullable=False),
        sa.Column("consensus_seg_sha256", sa.String(64), nullable=True),
        sa.Column("consensus_sr_sha256", sa.String(64), nullable=True),
        sa.Column("consensus_seg_uid", sa.String(64), nullable=True),
        sa.Column("disagreement", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("edited_seg_sha256", sa.String(64), nullable=True),
        sa.Column("edited_sr_sha256", sa.String(64), nullable=True),
        sa.Column("edited_seg_uid", sa.String(64), nullable=True),
        sa.Column("edited_from_uid", sa.String(64), nullable=True),
        sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("decided_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("case_id", "round"),
    )
    op.create_index("ix_reviews_project_status", "reviews", ["project_id", "status"])
    op.create_table(
        "review_metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("review_id", sa.Integer, sa.ForeignKey("reviews.id"), nullable=False),
        sa.Column("segment", sa.String(64), nullable=False),
        sa.Column("a", sa.String(32), nullable=False),
        sa.Column("b", sa.String(32), nullable=False),
        sa.Column("dice", sa.Float, nullable=False),
        sa.Column("hd95_mm", sa.Float, nullable=True),
        sa.Column("nsd", sa.Float, nullable=False),
        sa.Column("tolerance_mm", sa.Float, nullable=False),
        sa.Column("volume_a_ml", sa.Float, nullable=False),
        sa.Column("volume_b_ml", sa.Float, nullable=False),
        sa.Column("volume_difference_ml", sa.Float, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("below_threshold", sa.Boolean, nullable=False),
    )
    op.create_index("ix_review_metrics_review_id", "review_metrics", ["review_id"])
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("review_id", sa.Integer, sa.ForeignKey("reviews.id"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("submission_id", sa.Integer, sa.ForeignKey("submissions.id"), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("user_id", "idempotency_key"),
    )
    op.create_table(
        "signatures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("submission_id", sa.Integer, sa.ForeignKey("submissions.id"), nullable=True),
        sa.Column("review_id", sa.Integer, sa.ForeignKey("reviews.id"), nullable=True),
        sa.Column("subject", sa.String(16), nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("printed_name", sa.String(256), nullable=False),
        sa.Column("meaning", sa.String(16), nullable=False),
        sa.Column("signed_at", sa.DateTime, nullable=False),
        sa.Column("verified_sr_sha256", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("signatures")
    op.drop_table("review_decisions")
    op.drop_index("ix_review_metrics_review_id", "review_metrics")
    op.drop_table("review_metrics")
    op.drop_index("ix_reviews_project_status", "reviews")
    op.drop_table("reviews")
