"""Which Label Studio server holds a rater's projects (``labelstudio push --rater R --url``).

Double-blind in Label Studio Community: each rater works on a server of their own, and every
later command for the rater reaches it without --url. Only the address is kept: the token
never enters the catalogue. Two servers number their projects each from 1, so a project id
is unique per rater (whose projects are all on the rater's server), no longer in the whole
catalogue.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


# 0002 made the project id's unique constraint without a name: SQLite's copy of the table is
# reflected under this convention, PostgreSQL named it itself.
CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
PG_NAME = "labelstudio_projects_project_id_key"


def _project_id_unique() -> str:
    return (
        PG_NAME
        if op.get_bind().dialect.name == "postgresql"
        else CONVENTION["uq"]
        % {
            "table_name": "labelstudio_projects",
            "column_0_name": "project_id",
        }
    )


def upgrade() -> None:
    with op.batch_alter_table("raters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labelstudio_url", sa.String(length=512), nullable=True))
    with op.batch_alter_table(
        "labelstudio_projects", schema=None, naming_convention=CONVENTION
    ) as batch_op:
        batch_op.drop_constraint(_project_id_unique(), type_="unique")
        batch_op.create_unique_constraint(
            "uq_labelstudio_projects_rater_project", ["rater_id", "project_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table(
        "labelstudio_projects", schema=None, naming_convention=CONVENTION
    ) as batch_op:
        batch_op.drop_constraint("uq_labelstudio_projects_rater_project", type_="unique")
        batch_op.create_unique_constraint(_project_id_unique(), ["project_id"])
    with op.batch_alter_table("raters", schema=None) as batch_op:
        batch_op.drop_column("labelstudio_url")
