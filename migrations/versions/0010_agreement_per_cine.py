"""Whether an agreement sample took at most one frame per cine loop (``agreement --per-cine``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agreement_samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("per_cine", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agreement_samples", schema=None) as batch_op:
        batch_op.drop_column("per_cine")
