"""A keyed audit chain: each record's hash is also sealed with an HMAC under a server secret kept outside the
database (``MEDANNOT_AUDIT_KEY_FILE``), so a rewritten record with recomputed later hashes no longer verifies.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("mac", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("mac")
