"""Access reviews (recertification): campaigns, per-user findings, items, reviewers, exceptions.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"  # re-chained at merge: 0006 (shares) -> 0007 (break-glass) -> 0008
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # the review's per-user activity aggregate (bridge/review/facts.py) reads this index alone
    op.create_index("ix_audit_events_actor_activity", "audit_events", ["actor_user", "type", "outcome", "time"])
    op.create_table(
        "review_campaigns",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("deadline", TZ, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_by", sa.String(length=256), nullable=False),
        sa.Column("policy_source", sa.String(length=1024), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_campaigns")),
    )
    op.create_index(op.f("ix_review_campaigns_started_at"), "review_campaigns", ["started_at"])
    op.create_table(
        "review_users",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.Column("department", sa.String(length=256), nullable=False),
        sa.Column("last_login", sa.String(length=32), nullable=True),
        sa.Column("last_access", sa.String(length=32), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_users")),
        sa.UniqueConstraint("campaign_id", "subject_id", name="uq_review_user"),
    )
    op.create_index(op.f("ix_review_users_campaign_id"), "review_users", ["campaign_id"])
    op.create_table(
        "review_items",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.Column("department", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("source_group_dn", sa.String(length=1024), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=True),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("escalated_at", TZ, nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_by_name", sa.String(length=256), nullable=True),
        sa.Column("decided_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sa.UniqueConstraint("campaign_id", "subject_id", "role", name="uq_review_item"),
    )
    op.create_index(op.f("ix_review_items_campaign_id"), "review_items", ["campaign_id"])
    op.create_index(op.f("ix_review_items_subject_id"), "review_items", ["subject_id"])
    op.create_index(op.f("ix_review_items_queue"), "review_items", ["queue"])
    op.create_table(
        "review_reviewers",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_reviewers")),
        sa.UniqueConstraint("campaign_id", "queue", "subject_id", name="uq_review_reviewer"),
    )
    op.create_index(op.f("ix_review_reviewers_campaign_id"), "review_reviewers", ["campaign_id"])
    op.create_index(op.f("ix_review_reviewers_subject_id"), "review_reviewers", ["subject_id"])
    op.create_table(
        "review_exceptions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=128), nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("until", TZ, nullable=True),
        sa.Column("ended_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_exceptions")),
    )
    op.create_index(op.f("ix_review_exceptions_subject_id"), "review_exceptions", ["subject_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor_activity", table_name="audit_events")
    op.drop_index(op.f("ix_review_exceptions_subject_id"), table_name="review_exceptions")
    op.drop_table("review_exceptions")
    op.drop_index(op.f("ix_review_reviewers_subject_id"), table_name="review_reviewers")
    op.drop_index(op.f("ix_review_reviewers_campaign_id"), table_name="review_reviewers")
    op.drop_table("review_reviewers")
    op.drop_index(op.f("ix_review_items_queue"), table_name="review_items")
    op.drop_index(op.f("ix_review_items_subject_id"), table_name="review_items")
    op.drop_index(op.f("ix_review_items_campaign_id"), table_name="review_items")
    op.drop_table("review_items")
    op.drop_index(op.f("ix_review_users_campaign_id"), table_name="review_users")
    op.drop_table("review_users")
    op.drop_index(op.f("ix_review_campaigns_started_at"), table_name="review_campaigns")
    op.drop_table("review_campaigns")
