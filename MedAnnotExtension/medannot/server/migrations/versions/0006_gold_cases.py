"""Gold cases: a case may carry a reference SEG (the manifest's ``gold`` column); every read of it is measured
against the reference when its review round opens (review_metrics rows with b = "gold").

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("gold_path", sa.Text, nullable=True))
        batch.add_column(sa.Column("gold_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("gold_sha256")
        batch.drop_column("gold_path")
