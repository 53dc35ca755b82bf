"""partitioned exports: exports.parts (and how many are done) and one row per partition

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
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("parts", sa.Integer))
        batch.add_column(sa.Column("parts_done", sa.Integer))
    op.create_table(
        "export_parts",
        sa.Column("export_id", sa.String(36), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("retry_at", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("events_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("files", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_export_parts_status", "export_parts", ["status", "lease_expires"])


def downgrade() -> None:
    op.drop_table("export_parts")
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("parts")
        batch.drop_column("parts_done")
