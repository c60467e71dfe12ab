"""Reader qualification: printed name, qualification, credentials and training date of a user, for the roster
of the submission package.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("printed_name", sa.String(256), nullable=True))
        batch.add_column(sa.Column("qualification", sa.Text, nullable=True))
        batch.add_column(sa.Column("credentials", sa.Text, nullable=True))
        batch.add_column(sa.Column("trained_on", sa.Date, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        for column in ("trained_on", "credentials", "qualification", "printed_name"):
            batch.drop_column(column)
