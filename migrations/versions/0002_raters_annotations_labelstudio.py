"""Raters, versioned annotations with per-structure statistics, Label Studio projects and tasks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "raters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "labelstudio_projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rater_id"],
            ["raters.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id"),
    )
    with op.batch_alter_table("labelstudio_projects", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labelstudio_projects_rater_id"), ["rater_id"], unique=False
        )

    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.String(length=256), nullable=True),
        sa.Column("mask_hash", sa.String(length=64), nullable=False),
        sa.Column("protocol", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["rater_id"],
            ["raters.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "rater_id", "version"),
    )
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_annotations_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_annotations_rater_id"), ["rater_id"], unique=False)

    op.create_table(
        "labelstudio_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["labelstudio_projects.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "image_id"),
        sa.UniqueConstraint("project_id", "task_id"),
    )
    with op.batch_alter_table("labelstudio_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_labelstudio_tasks_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "structure_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("structure", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("area_px", sa.Integer(), nullable=False),
        sa.Column("area_mm2", sa.Float(), nullable=True),
        sa.Column("components", sa.Integer(), nullable=False),
        sa.Column("x0", sa.Integer(), nullable=True),
        sa.Column("y0", sa.Integer(), nullable=True),
        sa.Column("x1", sa.Integer(), nullable=True),
        sa.Column("y1", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("annotation_id", "structure"),
    )
    with op.batch_alter_table("structure_stats", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_structure_stats_annotation_id"), ["annotation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("structure_stats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_structure_stats_annotation_id"))

    op.drop_table("structure_stats")
    with op.batch_alter_table("labelstudio_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labelstudio_tasks_project_id"))

    op.drop_table("labelstudio_tasks")
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annotations_rater_id"))
        batch_op.drop_index(batch_op.f("ix_annotations_image_id"))

    op.drop_table("annotations")
    with op.batch_alter_table("labelstudio_projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labelstudio_projects_rater_id"))

    op.drop_table("labelstudio_projects")
    op.drop_table("raters")
