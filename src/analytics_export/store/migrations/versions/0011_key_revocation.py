"""API keys get an id to name them by, a display prefix, a last-used time and a revocation time

Revision ID: 0011
Revises: 0010
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("id", sa.String(32)))
        batch.add_column(sa.Column("prefix", sa.String(16)))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True)))
    keys = sa.table("api_keys", sa.column("key_hash", sa.String), sa.column("id", sa.String))
    bind = op.get_bind()
    for (digest,) in bind.execute(sa.select(keys.c.key_hash)).all():  # keys made before ids: new random ids
        bind.execute(keys.update().where(keys.c.key_hash == digest).values(id=secrets.token_hex(8)))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("id", existing_type=sa.String(32), nullable=False)
        batch.create_index("ix_api_keys_id", ["id"], unique=True)
        batch.create_index("ix_api_keys_project", ["project"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_project")
        batch.drop_index("ix_api_keys_id")
        batch.drop_column("revoked_at")
        batch.drop_column("last_used_at")
        batch.drop_column("prefix")
        batch.drop_column("id")
