"""projects brought over from Custom Vision: regions, detection domain, migration records

Revision ID: 0007_migrate
Revises: 0006_revoked_sessions
Create Date: 2026-11-28 09:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_migrate"
down_revision = "0006_revoked_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detection_domain", sa.String(length=64), nullable=True))
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("regions", sa.JSON(), nullable=True))
    op.create_table(
        "project_migrations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("endpoint", sa.String(length=512), nullable=False),
        sa.Column("source_project_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("tag_map", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint", "source_project_id"),
    )
    with op.batch_alter_table("project_migrations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_project_migrations_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("project_migrations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_project_migrations_project_id"))
    op.drop_table("project_migrations")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("regions")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("detection_domain")
