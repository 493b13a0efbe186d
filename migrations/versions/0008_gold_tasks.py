"""Gold-standard tasks: which images were handed to which rater as gold, against which
reference label version; and whether an agreement sample kept raters' gold labels.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gold_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("reference_annotation_id", sa.Integer(), nullable=False),
        sa.Column("tool", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.ForeignKeyConstraint(["rater_id"], ["raters.id"]),
        sa.ForeignKeyConstraint(["reference_annotation_id"], ["annotations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rater_id", "image_id"),
    )
    with op.batch_alter_table("gold_tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gold_tasks_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_gold_tasks_rater_id"), ["rater_id"], unique=False)
    with op.batch_alter_table("agreement_samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("include_gold", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agreement_samples", schema=None) as batch_op:
        batch_op.drop_column("include_gold")
    with op.batch_alter_table("gold_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gold_tasks_rater_id"))
        batch_op.drop_index(batch_op.f("ix_gold_tasks_image_id"))
    op.drop_table("gold_tasks")
