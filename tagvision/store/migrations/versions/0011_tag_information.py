"""tag information, decision rules, prediction records

Revision ID: 0011_tag_information
Revises: 0010_jobs
Create Date: 2026-11-30 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_tag_information"
down_revision = "0010_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rules", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("information", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("information_sha", sa.String(length=64), nullable=True))
    op.create_table(
        "tag_information",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("information", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decision", sa.JSON(), nullable=True))
    with op.batch_alter_table("prediction_tags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("information_sha", sa.String(length=64), nullable=True))
    op.create_table(
        "prediction_metadata",
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("prediction_id", "key"),
    )
    op.create_index("ix_prediction_metadata_key_value", "prediction_metadata", ["key", "value"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_prediction_metadata_key_value", table_name="prediction_metadata")
    op.drop_table("prediction_metadata")
    with op.batch_alter_table("prediction_tags", schema=None) as batch_op:
        batch_op.drop_column("information_sha")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("decision")
    op.drop_table("tag_information")
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_column("information_sha")
        batch_op.drop_column("information")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("retention_days")
        batch_op.drop_column("rules")
