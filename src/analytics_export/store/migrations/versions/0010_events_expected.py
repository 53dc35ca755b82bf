"""how many events a running export expects, for progress bars and their ETA

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
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("events_expected", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("events_expected")
