"""when a failed attempt may run again (retries with exponential backoff)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("retry_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("retry_at")
