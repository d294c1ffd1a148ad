"""Study shares (issue 14): the never-used ``shares`` table of 0001 replaced by internal and external
shares, and the wrong-passcode counters of external shares.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001's table was never written to (nothing created a share before this revision)
    with op.batch_alter_table("shares", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shares_study_uid"))
        batch_op.drop_index(batch_op.f("ix_shares_expires_at"))
    op.drop_table("shares")
    op.create_table(
        "shares",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=True),
        sa.Column("created_by", sa.String(length=512), nullable=False),
        sa.Column("created_by_name", sa.String(length=256), nullable=True),
        sa.Column("recipient_kind", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=1024), nullable=False),
        sa.Column("recipient_name", sa.String(length=256), nullable=True),
        sa.Column("recipient_org", sa.String(length=256), nullable=True),
        sa.Column("recipient_country", sa.String(length=2), nullable=True),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("legal_basis", sa.String(length=512), nullable=False),
        sa.Column("transfer_basis", sa.String(length=512), nullable=True),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("link_hash", sa.String(length=64), nullable=True),
        sa.Column("passcode_hash", sa.String(length=256), nullable=True),
        sa.Column("passcode_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=512), nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
        sa.UniqueConstraint("link_hash", name=op.f("uq_shares_link_hash")),
    )
    with op.batch_alter_table("shares", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shares_study_uid"), ["study_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_shares_created_by"), ["created_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_shares_recipient"), ["recipient"], unique=False)
        batch_op.create_index(batch_op.f("ix_shares_expires_at"), ["expires_at"], unique=False)
    op.create_table(
        "share_passcode_failures",
        sa.Column("share_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("share_id", "source", name=op.f("pk_share_passcode_failures")),
    )


def downgrade() -> None:
    op.drop_table("share_passcode_failures")
    with op.batch_alter_table("shares", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shares_expires_at"))
        batch_op.drop_index(batch_op.f("ix_shares_recipient"))
        batch_op.drop_index(batch_op.f("ix_shares_created_by"))
        batch_op.drop_index(batch_op.f("ix_shares_study_uid"))
    op.drop_table("shares")
    op.create_table(
        "shares",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=True),
        sa.Column("created_by", sa.String(length=512), nullable=False),
        sa.Column("recipient", sa.String(length=512), nullable=True),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
    )
    with op.batch_alter_table("shares", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shares_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_shares_study_uid"), ["study_uid"], unique=False)
