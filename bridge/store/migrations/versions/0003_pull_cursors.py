"""Cursors of the jobs that pull events from other systems (Keycloak user events).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pull_cursors",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("ids", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_pull_cursors")),
    )


def downgrade() -> None:
    op.drop_table("pull_cursors")
