"""jobs that workers claim, and API keys in the database

Revision ID: 0010_jobs
Revises: 0009_acquisition_reasons
Create Date: 2026-11-28 14:00:00.000000

Work left unfinished by the process that started it (an iteration Training, an export Exporting, an
acquisition Running) becomes a queued job, so the first worker after the upgrade resumes it, as the
server's start did before.
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010_jobs"
down_revision = "0009_acquisition_reasons"
branch_labels = None
depends_on = None

UNFINISHED = (
    ("train", "iterations", "Training"),
    ("export", "exports", "Exporting"),
    ("acquire", "acquisitions", "Running"),
)


def upgrade() -> None:
    jobs = op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("lease_expires", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started", sa.Float(), nullable=True),
        sa.Column("finished", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "target_id"),
    )
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created"], unique=False)
    op.create_table(
        "api_keys",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind"),
    )
    connection = op.get_bind()
    now = datetime.now(UTC)
    rows = []
    for kind, table, status in UNFINISHED:
        found = connection.execute(
            sa.text(f"SELECT id FROM {table} WHERE status = :status ORDER BY created").bindparams(status=status)
        )
        rows += [
            {
                "id": str(uuid.uuid4()),
                "kind": kind,
                "target_id": target,
                "status": "Queued",
                "attempt": 0,
                "created": now,
            }
            for (target,) in found
        ]
    if rows:
        op.bulk_insert(jobs, rows)


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_table("jobs")
