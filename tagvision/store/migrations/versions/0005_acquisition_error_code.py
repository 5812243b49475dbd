"""acquisition error code

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:12:41.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("acquisitions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_code", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("acquisitions", schema=None) as batch_op:
        batch_op.drop_column("error_code")
