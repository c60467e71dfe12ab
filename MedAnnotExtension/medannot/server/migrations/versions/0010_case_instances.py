"""The SOP Instance UIDs of a case's series (JSON list): a submitted SEG may reference only these. Filled at
import for local sources, and at the first download or submit for DICOMweb ones.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("instance_uids", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("instance_uids")
