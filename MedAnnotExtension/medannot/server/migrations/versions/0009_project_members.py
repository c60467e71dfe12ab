"""Project membership: an annotator claims, and a reviewer reviews, only in the projects an admin made them a
member of. Existing projects keep working: every annotator and reviewer becomes a member of every existing project.

Revision ID: 0009
Revises: 0008
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    members = op.create_table(
        "project_members",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("added_at", sa.DateTime, nullable=False),
        sa.Column("added_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("project_id", "user_id"),
    )
    bind = op.get_bind()
    projects = [row[0] for row in bind.execute(sa.text("SELECT id FROM projects"))]
    users = [row[0] for row in bind.execute(sa.text("SELECT id FROM users WHERE role IN ('annotator', 'reviewer')"))]
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC, as every timestamp of the schema
    op.bulk_insert(members, [{"project_id": p, "user_id": u, "added_at": now, "added_by": "migration 0009"}
                             for p in projects for u in users])


def downgrade() -> None:
    op.drop_table("project_members")
