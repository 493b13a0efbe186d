"""A label made with clicks: ``draft_clicks``, how many points a rater placed for an
interactive run's ML backend to redraw the label's regions from (Label Studio's smart
KeyPointLabels); the run is the label's draft_version / draft_run_id, as for a draft.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draft_clicks", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_column("draft_clicks")
