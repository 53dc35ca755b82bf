"""privacy: policy versions, per-project pseudonym secrets, suppressed users, the version each export applied

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports") as batch:
        batch.add_column(sa.Column("privacy_version", sa.Integer))
        batch.add_column(sa.Column("dropped_properties", sa.JSON))
    op.create_table(
        "privacy_policies",
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "privacy_secrets",
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "suppressions",
        sa.Column("project", sa.String(200), primary_key=True),
        sa.Column("distinct_id", sa.Text, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_table("privacy_secrets")
    op.drop_table("privacy_policies")
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("privacy_version")
        batch.drop_column("dropped_properties")
