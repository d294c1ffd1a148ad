"""Break-glass grants and their review queue (bridge/breakglass/).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"  # re-chained at merge: 0006 (shares) -> 0007 -> 0008 (reviews)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "break_glass_grants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=True),
        sa.Column("target_kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("purpose_of_use", sa.String(length=16), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("network_address", sa.String(length=128), nullable=True),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review_state", sa.String(length=16), nullable=False),
        sa.Column("reviewer_id", sa.String(length=128), nullable=True),
        sa.Column("reviewer_username", sa.String(length=256), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_comment", sa.Text(), nullable=True),
        sa.Column("stop_recorded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_break_glass_grants")),
    )
    with op.batch_alter_table("break_glass_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_break_glass_grants_subject_id"), ["subject_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_break_glass_grants_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_break_glass_grants_review_state"), ["review_state"], unique=False)
        batch_op.create_index(batch_op.f("ix_break_glass_grants_stop_recorded"), ["stop_recorded"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("break_glass_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_break_glass_grants_stop_recorded"))
        batch_op.drop_index(batch_op.f("ix_break_glass_grants_review_state"))
        batch_op.drop_index(batch_op.f("ix_break_glass_grants_expires_at"))
        batch_op.drop_index(batch_op.f("ix_break_glass_grants_subject_id"))
    op.drop_table("break_glass_grants")
