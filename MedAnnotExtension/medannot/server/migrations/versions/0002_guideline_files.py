"""Guideline files: the reference images of a guideline version's instructions, served with its YAML.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guideline_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guideline_version_id", sa.Integer, sa.ForeignKey("guideline_versions.id"), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("guideline_version_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("guideline_files")
