"""streams: continuous exports, their cursor (checkpointed after each acknowledged batch) and lease

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cursor_uuid", sa.String(64), nullable=False, server_default=""),
        sa.Column("delivered_events", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("delivered_batches", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_delivered_at", sa.DateTime(timezone=True)),
        sa.Column("lag_seconds", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.Column("failing_since", sa.DateTime(timezone=True)),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_streams_project", "streams", ["project", "created_at"])


def downgrade() -> None:
    op.drop_table("streams")
