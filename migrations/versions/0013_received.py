"""What ``datatool listen`` received: one row per acknowledged object (receipt, calling AE
title, when, and ingest's outcome), for ``datatool status``. No patient data.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "received",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("receipt", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("receipt"),
    )
    with op.batch_alter_table("received", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_received_calling_ae"), ["calling_ae"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("received", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_received_calling_ae"))
    op.drop_table("received")
