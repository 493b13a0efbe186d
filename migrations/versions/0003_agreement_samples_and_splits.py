"""Saved agreement samples (images and annotation versions) and frozen patient-level splits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "splits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("ratios", sa.String(length=32), nullable=False),
        sa.Column("folds", sa.Integer(), nullable=False),
        sa.Column("stratify", sa.String(length=16), nullable=True),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "agreement_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rater_a_id", sa.Integer(), nullable=False),
        sa.Column("rater_b_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rater_a_id"],
            ["raters.id"],
        ),
        sa.ForeignKeyConstraint(
            ["rater_b_id"],
            ["raters.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "agreement_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotation_a_id", sa.Integer(), nullable=False),
        sa.Column("annotation_b_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotation_a_id"],
            ["annotations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["annotation_b_id"],
            ["annotations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"],
            ["agreement_samples.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sample_id", "image_id"),
    )
    with op.batch_alter_table("agreement_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_agreement_items_sample_id"), ["sample_id"], unique=False
        )

    op.create_table(
        "split_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("split_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("subset", sa.String(length=8), nullable=False),
        sa.Column("fold", sa.Integer(), nullable=True),
        sa.Column("annotation_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["split_id"],
            ["splits.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("split_id", "image_id"),
    )
    with op.batch_alter_table("split_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_split_members_split_id"), ["split_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("split_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_split_members_split_id"))

    op.drop_table("split_members")
    with op.batch_alter_table("agreement_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agreement_items_sample_id"))

    op.drop_table("agreement_items")
    op.drop_table("agreement_samples")
    op.drop_table("splits")
