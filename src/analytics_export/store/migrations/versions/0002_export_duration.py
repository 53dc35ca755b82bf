"""how long each finished export ran, for the duration metrics

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("duration_seconds", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("duration_seconds")
