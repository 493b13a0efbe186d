"""QA flags (the review queue) and Label Studio review projects with their tasks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "qa_flags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("structure", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.Column("severity", sa.Float(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("annotation_id", "structure", "reason"),
    )
    with op.batch_alter_table("qa_flags", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_qa_flags_annotation_id"), ["annotation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_qa_flags_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_qa_flags_reason"), ["reason"], unique=False)
        batch_op.create_index(batch_op.f("ix_qa_flags_status"), ["status"], unique=False)

    op.create_table(
        "qa_review_projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("store_as", sa.String(length=16), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rater_id"],
            ["raters.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"],
            ["raters.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id"),
    )
    with op.batch_alter_table("qa_review_projects", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_qa_review_projects_rater_id"), ["rater_id"], unique=False
        )

    op.create_table(
        "qa_review_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("review_project_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("stored_annotation_id", sa.Integer(), nullable=True),
        sa.Column("ls_annotation_id", sa.Integer(), nullable=True),
        sa.Column("ls_updated", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotation_id"],
            ["annotations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
        ),
        sa.ForeignKeyConstraint(
            ["review_project_id"],
            ["qa_review_projects.id"],
        ),
        sa.ForeignKeyConstraint(
            ["stored_annotation_id"],
            ["annotations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("review_project_id", "annotation_id"),
        sa.UniqueConstraint("review_project_id", "task_id"),
    )
    with op.batch_alter_table("qa_review_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_qa_review_tasks_review_project_id"), ["review_project_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("qa_review_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_qa_review_tasks_review_project_id"))

    op.drop_table("qa_review_tasks")
    with op.batch_alter_table("qa_review_projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_qa_review_projects_rater_id"))

    op.drop_table("qa_review_projects")
    with op.batch_alter_table("qa_flags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_qa_flags_status"))
        batch_op.drop_index(batch_op.f("ix_qa_flags_reason"))
        batch_op.drop_index(batch_op.f("ix_qa_flags_image_id"))
        batch_op.drop_index(batch_op.f("ix_qa_flags_annotation_id"))

    op.drop_table("qa_flags")
