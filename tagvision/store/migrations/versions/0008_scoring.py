"""scoring jobs and an iteration's serving precision

Revision ID: 0008_scoring
Revises: 0007_migrate
Create Date: 2026-11-28 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_scoring"
down_revision = "0007_migrate"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("iterations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("precision", sa.String(length=16), nullable=True))
    op.create_table(
        "scorings",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("iteration_id", sa.String(length=36), nullable=True),
        sa.Column("precision", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["iteration_id"], ["iterations.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("scorings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scorings_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("scorings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scorings_project_id"))
    op.drop_table("scorings")
    with op.batch_alter_table("iterations", schema=None) as batch_op:
        batch_op.drop_column("precision")
