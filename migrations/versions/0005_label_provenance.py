"""Where labels started: the model draft an annotation was made from (Label Studio prediction
or pre-filled ITK-SNAP segmentation), and whether an agreement sample kept such images.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draft_version", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("draft_run_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("draft_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("draft_unchanged", sa.Boolean(), nullable=True))
        batch_op.create_foreign_key(
            "fk_annotations_draft_run_id_runs", "runs", ["draft_run_id"], ["id"]
        )
    with op.batch_alter_table("agreement_samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("include_prelabelled", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agreement_samples", schema=None) as batch_op:
        batch_op.drop_column("include_prelabelled")
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_constraint("fk_annotations_draft_run_id_runs", type_="foreignkey")
        batch_op.drop_column("draft_unchanged")
        batch_op.drop_column("draft_hash")
        batch_op.drop_column("draft_run_id")
        batch_op.drop_column("draft_version")
