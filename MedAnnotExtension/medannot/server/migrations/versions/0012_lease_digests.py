"""Lease tokens are kept only as their sha256 (a copy of the database no longer holds live tokens), and each
Idempotency-Key remembers the lease its submit or decision was made with (a replay must present the same lease).

Existing tokens are hashed in place, so readers holding a lease keep it across the upgrade.

Revision ID: 0012
Revises: 0011
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

LEASED_TABLES = ("tasks", "reviews")


def upgrade() -> None:
    connection = op.get_bind()
    for table in LEASED_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("lease_sha256", sa.String(64), nullable=True))
        rows = connection.execute(sa.text(f"SELECT id, lease_token FROM {table} WHERE lease_token IS NOT NULL"))
        for row_id, token in rows.fetchall():
            digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
            connection.execute(sa.text(f"UPDATE {table} SET lease_sha256 = :d WHERE id = :i"),
                               {"d": digest, "i": row_id})
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease_token")
    for table in ("idempotency_keys", "review_decisions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("lease_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    # the tokens themselves cannot be recovered from their digests: every open lease must be claimed again
    for table in ("idempotency_keys", "review_decisions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease_sha256")
    for table in LEASED_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("lease_token", sa.String(64), nullable=True))
            batch.drop_column("lease_sha256")
