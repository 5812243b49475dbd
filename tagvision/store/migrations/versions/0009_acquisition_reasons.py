"""acquisition reasons: why a candidate was refused or set aside, what it warns of, how it looked

Revision ID: 0009_acquisition_reasons
Revises: 0008_scoring
Create Date: 2026-11-28 09:30:00.000000
"""

import json
import re

import sqlalchemy as sa
from alembic import op

# How the downloader worded a size refusal before reasons were stored: "120x90 is smaller than 224 px on a side."
TOO_SMALL = re.compile(r"^(\d+)x(\d+) is smaller than (\d+) px on a side")

revision = "0009_acquisition_reasons"
down_revision = "0008_scoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("acquisition_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("detail", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("score", sa.Float(), nullable=True))
    # Earlier size refusals get their reason, so a later acquisition with another minSide looks at them again.
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT id, message FROM acquisition_items WHERE status = 'Refused' AND message LIKE '%px on a side%'")
    ).all()
    for item_id, message in rows:
        found = TOO_SMALL.match(message or "")
        if found:
            width, height, min_side = map(int, found.groups())
            connection.execute(
                sa.text("UPDATE acquisition_items SET reason = 'TooSmall', detail = :detail WHERE id = :id"),
                {"id": item_id, "detail": json.dumps({"width": width, "height": height, "minSide": min_side})},
            )


def downgrade() -> None:
    with op.batch_alter_table("acquisition_items", schema=None) as batch_op:
        batch_op.drop_column("score")
        batch_op.drop_column("detail")
        batch_op.drop_column("reason")
