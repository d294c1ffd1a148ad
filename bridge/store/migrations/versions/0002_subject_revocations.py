"""Per-subject revocation watermarks (back-channel logout, disabled accounts).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_revocations",
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("exp", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_subject_revocations")),
    )
    with op.batch_alter_table("subject_revocations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subject_revocations_exp"), ["exp"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subject_revocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subject_revocations_exp"))
    op.drop_table("subject_revocations")
