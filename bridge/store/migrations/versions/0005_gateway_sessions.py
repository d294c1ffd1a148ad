"""Browser sessions of the gateway to Orthanc (tokens encrypted, the session id only as a hash).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("kc_sub", sa.String(length=128), nullable=False),
        sa.Column("sid", sa.String(length=256), nullable=True),
        sa.Column("username", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_activity", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_exp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("secrets", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_gateway_sessions")),
    )
    with op.batch_alter_table("gateway_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gateway_sessions_subject_id"), ["subject_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_gateway_sessions_kc_sub"), ["kc_sub"], unique=False)
        batch_op.create_index(batch_op.f("ix_gateway_sessions_sid"), ["sid"], unique=False)
        batch_op.create_index(batch_op.f("ix_gateway_sessions_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gateway_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_sessions_expires_at"))
        batch_op.drop_index(batch_op.f("ix_gateway_sessions_sid"))
        batch_op.drop_index(batch_op.f("ix_gateway_sessions_kc_sub"))
        batch_op.drop_index(batch_op.f("ix_gateway_sessions_subject_id"))
    op.drop_table("gateway_sessions")
