"""exports jobs and API keys

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("events_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_events", sa.BigInteger),
        sa.Column("file_size", sa.BigInteger),
        sa.Column("destination_path", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_exports_project_created", "exports", ["project", "created_at"])
    op.create_index("ix_exports_status_lease", "exports", ["status", "lease_expires"])
    op.create_table(
        "api_keys",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_exports_status_lease", "exports")
    op.drop_index("ix_exports_project_created", "exports")
    op.drop_table("exports")
