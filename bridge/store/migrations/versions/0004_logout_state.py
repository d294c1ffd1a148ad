"""Logout state shared by every worker: ended Keycloak sessions and seen logout-token ``jti`` values.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ended_sessions",
        sa.Column("sid", sa.String(length=256), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exp", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_ended_sessions")),
    )
    with op.batch_alter_table("ended_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ended_sessions_exp"), ["exp"], unique=False)
    op.create_table(
        "logout_token_jtis",
        sa.Column("jti", sa.String(length=256), nullable=False),
        sa.Column("exp", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_logout_token_jtis")),
    )
    with op.batch_alter_table("logout_token_jtis", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_logout_token_jtis_exp"), ["exp"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("logout_token_jtis", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_logout_token_jtis_exp"))
    op.drop_table("logout_token_jtis")
    with op.batch_alter_table("ended_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ended_sessions_exp"))
    op.drop_table("ended_sessions")
