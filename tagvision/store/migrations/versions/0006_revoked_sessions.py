"""revoked portal sessions

Revision ID: 0006_revoked_sessions
Revises: 0005
Create Date: 2026-11-28 10:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_revoked_sessions"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revoked_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_revoked_sessions_expires"), "revoked_sessions", ["expires"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_revoked_sessions_expires"), table_name="revoked_sessions")
    op.drop_table("revoked_sessions")
