"""How a label's draft link was found when no tool recorded it: ``draft_link`` ("overlap":
Label Studio gave no parent_prediction but the label is close to a draft handed to the rater;
"accepted unchanged": an ITK-SNAP draft stored as it is with ``sync itksnap
--accept-unchanged``) and, for an overlap, the IoU per structure (``draft_iou``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draft_link", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("draft_iou", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_column("draft_iou")
        batch_op.drop_column("draft_link")
