"""Agreement of ultrasound cines: a cine is compared frame by frame (2D + t) and has areas, not volumes, so the
volume columns of review_metrics may be empty (NULL, with the row's note saying why).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_metrics") as batch:  # SQLite cannot ALTER COLUMN: batch copies the table
        for column in ("volume_a_ml", "volume_b_ml", "volume_difference_ml"):
            batch.alter_column(column, existing_type=sa.Float, nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("review_metrics") as batch:
        for column in ("volume_a_ml", "volume_b_ml", "volume_difference_ml"):
            batch.alter_column(column, existing_type=sa.Float, nullable=False)
