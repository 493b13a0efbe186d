"""Draft handouts: every model draft datatool hands a rater (image, rater, run, mask hash).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "draft_handouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("mask_hash", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.ForeignKeyConstraint(["rater_id"], ["raters.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "rater_id", "mask_hash", "via"),
    )
    with op.batch_alter_table("draft_handouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_draft_handouts_image_id"), ["image_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_draft_handouts_mask_hash"), ["mask_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_draft_handouts_rater_id"), ["rater_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("draft_handouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_draft_handouts_rater_id"))
        batch_op.drop_index(batch_op.f("ix_draft_handouts_mask_hash"))
        batch_op.drop_index(batch_op.f("ix_draft_handouts_image_id"))
    op.drop_table("draft_handouts")
