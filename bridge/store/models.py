"""SQLAlchemy 2.x models of every table the bridge owns.

Small and explicit on purpose: each table serves one part of the product and the Alembic
migrations in ``migrations/versions`` create exactly these (a unit test compares them).

Times: ordinary timestamps use :class:`UTCDateTime` (always timezone-aware UTC in Python,
whatever the backend stores).  The audit trail is the exception: its ``time`` is the ISO-8601
text that the hash covers, so that SQLite and PostgreSQL give back the very bytes that were hashed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64-bit keys.
BigInt = BigInteger().with_variant(Integer, "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones and would return naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AuditEventRow(Base):
    """One audit record.  Append-only: rows are never updated; retention archives then deletes
    the oldest ones.  ``hash`` = SHA-256 over the canonical JSON of the record including
    ``prev_hash`` (see bridge/audit/chain.py), so any edit, deletion, insertion or reordering
    breaks the chain.  The indexed columns are what queries filter on; ``body`` holds the rest."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    time: Mapped[str] = mapped_column(String(32), index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[int] = mapped_column(SmallInteger)
    actor_user: Mapped[str | None] = mapped_column(String(512), index=True)
    actor_username: Mapped[str | None] = mapped_column(String(256), index=True)
    client_id: Mapped[str | None] = mapped_column(String(256))
    network_address: Mapped[str | None] = mapped_column(String(128))
    patient_id: Mapped[str | None] = mapped_column(String(128), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """The single row that serialises appends (locked by every writer) and remembers where the
    chain starts after retention (``base_seq``/``base_hash``: the last archived record)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInt)
    last_hash: Mapped[str] = mapped_column(String(64))
    base_seq: Mapped[int] = mapped_column(BigInt)
    base_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement "record ``seq`` has hash ``hash``": a rewrite of the chain before it
    cannot be hidden without the signing key.  ``kind``: periodic | manual | archive."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInt, index=True)
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    kid: Mapped[str] = mapped_column(String(64))
    alg: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(256))


class SyncRun(Base):
    """History of directory synchronisation runs."""

    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: running | ok | failed | threshold_stop | dry_run
    status: Mapped[str] = mapped_column(String(32), default="running")
    mode: Mapped[str] = mapped_column(String(16), default="delta")
    owner: Mapped[str | None] = mapped_column(String(128))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)


class SyncLock(Base):
    """A lease so that only one replica syncs at a time (see bridge/store/lease.py)."""

    __tablename__ = "sync_lock"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    acquired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RoleAssignment(Base):
    """The bridge's own record of who holds which PACS role and why.

    ``subject_id`` is the directory's stable id (AD objectGUID / LDAP entryUUID), not the
    username, so a rename does not look like a leaver plus a joiner.  ``managed`` rows belong to
    the sync (it may remove them); unmanaged rows were granted by hand and the sync leaves them.
    ``source_group_dn`` is '' for a manual grant (NULLs would defeat the unique constraint)."""

    __tablename__ = "role_assignments"
    __table_args__ = (UniqueConstraint("subject_id", "role", "source_group_dn", name="uq_role_assignment"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    username: Mapped[str] = mapped_column(String(256), index=True)
    role: Mapped[str] = mapped_column(String(128), index=True)
    source_group_dn: Mapped[str] = mapped_column(String(1024), default="")
    rule_id: Mapped[str | None] = mapped_column(String(128))
    scopes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class SigningKey(Base):
    """Token signing keys; the private key is stored encrypted with the configured KEK."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: no longer used to sign, still published until ``not_after``
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    not_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RevokedToken(Base):
    """RFC 7009 revocations, kept until the token would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    exp: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SubjectRevocation(Base):
    """Every PACS token of one subject issued at or before ``not_before`` is revoked (logout,
    disabled account); kept until ``exp``, when the last such token has expired anyway."""

    __tablename__ = "subject_revocations"

    subject_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    exp: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class EndedSession(Base):
    """A Keycloak login session (``sid``) ended by logout: no bridge session or token exchange
    may ride on it any more.  In the database, not in one worker's memory, because the logout
    reaches one web server worker (or one replica) and the next request may reach another; kept
    until ``exp`` (longer than any session could have lived), then deleted."""

    __tablename__ = "ended_sessions"

    sid: Mapped[str] = mapped_column(String(256), primary_key=True)
    ended_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    exp: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class LogoutTokenSeen(Base):
    """``jti`` of every accepted back-channel logout token, so a replay is refused by every worker
    and replica (the primary key makes the check-and-record one atomic insert); kept until ``exp``,
    after which the token's ``iat`` is too old for it to be accepted anyway."""

    __tablename__ = "logout_token_jtis"

    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    exp: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class PullCursor(Base):
    """Where a job that pulls events from another system stopped (e.g. ``keycloak-events:hospital``).

    ``time_ms`` is the source's time of the newest event taken; ``ids`` the ids of the events
    taken *at* that time, because sources filter by time inclusively and several events can
    share a millisecond: the next pull starts at ``time_ms`` and skips those ids."""

    __tablename__ = "pull_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    time_ms: Mapped[int] = mapped_column(BigInteger)
    ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class GatewaySession(Base):
    """A browser session of the gateway (bridge/web/gateway): the browser holds only a random id,
    the row is found by its SHA-256 (``id_hash``), so a database reader cannot use a row as a
    cookie.  ``secrets`` holds the PACS token, Keycloak's refresh token and the ID token,
    AES-GCM encrypted under a key derived from the bridge's key-encryption key with ``id_hash``
    as associated data (a ciphertext moved to another row does not decrypt).  Deleted at logout."""

    __tablename__ = "gateway_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    kc_sub: Mapped[str] = mapped_column(String(128), index=True)
    sid: Mapped[str | None] = mapped_column(String(256), index=True)
    username: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_activity: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    token_exp: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    secrets: Mapped[bytes] = mapped_column(LargeBinary)


Index("ix_audit_events_type_time", AuditEventRow.type, AuditEventRow.time)


class Share(Base):
    """A share of one study (issue 14; docs/sharing.md).  ``kind`` internal: a per-study grant of
    kind ``share`` for a user or the members of a group, read at every token issue; external: a
    link (only its SHA-256, ``link_hash``, is kept) plus a passcode (only a scrypt hash) for a
    recipient outside the hospital, served de-identified by the share endpoint.  ``secret`` is the
    share's de-identification key (UIDs, date shift), AES-GCM encrypted under a key derived from the
    bridge's key-encryption key with the share id as associated data.  Rows are kept after expiry
    and revocation: they are what the audit trail's share ids refer to."""

    __tablename__ = "shares"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(512), index=True)
    created_by_name: Mapped[str | None] = mapped_column(String(256))
    #: user (directory id), group (DN) or external (e-mail address)
    recipient_kind: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(1024), index=True)
    recipient_name: Mapped[str | None] = mapped_column(String(256))
    recipient_org: Mapped[str | None] = mapped_column(String(256))
    recipient_country: Mapped[str | None] = mapped_column(String(2))
    rule_id: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(64))
    legal_basis: Mapped[str] = mapped_column(String(512))
    transfer_basis: Mapped[str | None] = mapped_column(String(512))
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    deidentified: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    link_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    passcode_hash: Mapped[str | None] = mapped_column(String(256))
    #: raised by every new passcode: share sessions opened with an older one end
    passcode_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(512))
    max_uses: Mapped[int | None] = mapped_column(Integer)
    use_count: Mapped[int] = mapped_column(Integer, default=0)


class SharePasscodeFailure(Base):
    """Wrong passcodes per external share and source address: at 5 the pair is locked out (until the
    sharer issues a new passcode, which clears the share's rows).  In the database, not one
    worker's memory: the next try may reach another worker or instance."""

    __tablename__ = "share_passcode_failures"

    share_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


Index("ix_audit_events_type_time", AuditEventRow.type, AuditEventRow.time)
#: the access review's per-user aggregate (last login, last PACS access) reads only this index
Index("ix_audit_events_actor_activity", AuditEventRow.actor_user, AuditEventRow.type, AuditEventRow.outcome,
      AuditEventRow.time)


class ReviewCampaign(Base):
    """One access review (recertification) run: when, until when reviewers may answer, and the
    figures the page charts over time (``summary``: users, dormant, privileged, roles per
    department ...).  ``status``: open | closed (a newer campaign closes the older one)."""

    __tablename__ = "review_campaigns"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    deadline: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")
    started_by: Mapped[str] = mapped_column(String(256))
    policy_source: Mapped[str] = mapped_column(String(1024), default="")
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ReviewUser(Base):
    """One user as a campaign saw them: department, last login and PACS access, the flags
    (dormant, orphan, disabled, sod, privileged, hand-assigned, out-of-scope) and their evidence."""

    __tablename__ = "review_users"
    __table_args__ = (UniqueConstraint("campaign_id", "subject_id", name="uq_review_user"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(BigInt, index=True)
    subject_id: Mapped[str] = mapped_column(String(128))
    username: Mapped[str] = mapped_column(String(256))
    department: Mapped[str] = mapped_column(String(256), default="")
    last_login: Mapped[str | None] = mapped_column(String(32))
    last_access: Mapped[str | None] = mapped_column(String(32))
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ReviewItem(Base):
    """One role assignment to confirm or revoke: who holds which role, from which group and rule
    (or by hand), which reviewer queue it is in (a scope id of the policy's ``reviewers:`` or
    ``privacy-officer``), and the decision with its comment, author and time."""

    __tablename__ = "review_items"
    __table_args__ = (UniqueConstraint("campaign_id", "subject_id", "role", name="uq_review_item"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(BigInt, index=True)
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    username: Mapped[str] = mapped_column(String(256))
    department: Mapped[str] = mapped_column(String(256), default="")
    role: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(32))  # policy | manual | keycloak-console | excepted
    source_group_dn: Mapped[str] = mapped_column(String(1024), default="")
    rule_id: Mapped[str | None] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(128), index=True)
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    decision: Mapped[str | None] = mapped_column(String(16))  # keep | revoke
    comment: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_by_name: Mapped[str | None] = mapped_column(String(256))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ReviewReviewer(Base):
    """Who may decide the items of a queue in a campaign: the members of the queue's directory
    group when the campaign started (a later change of the group needs a new campaign)."""

    __tablename__ = "review_reviewers"
    __table_args__ = (UniqueConstraint("campaign_id", "queue", "subject_id", name="uq_review_reviewer"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(BigInt, index=True)
    queue: Mapped[str] = mapped_column(String(128))
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    username: Mapped[str] = mapped_column(String(256))


class ReviewException(Base):
    """A revoked assignment the sync keeps away although the directory still grants it: applied
    on every run until ``until`` (if set) or until a later review decides on the same assignment
    (``ended_at``).  ``reason`` is what ``sync --plan`` shows."""

    __tablename__ = "review_exceptions"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    username: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[int] = mapped_column(BigInt)
    campaign_id: Mapped[int] = mapped_column(BigInt)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class BreakGlassGrant(Base):
    """One break-glass (emergency access) request: who, for which study or patient, why, until when,
    and its post-hoc review (bridge/breakglass/).  The row IS the grant: the token service reads the
    live rows of a subject at every issue (a ``break-glass`` grant scoped to ``target``), so a grant
    is never renewed past ``expires_at`` and vanishes from the next token when the requester loses
    the role that allowed it.  ``review_state`` stays ``open`` until another person closes it."""

    __tablename__ = "break_glass_grants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    username: Mapped[str | None] = mapped_column(String(256))
    #: ``study`` (a StudyInstanceUID) or ``patient`` (a PatientID)
    target_kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    purpose_of_use: Mapped[str] = mapped_column(String(16), default="BTG")
    #: the policy's emergency permissions at the time of the request (expanded)
    permissions: Mapped[list[str]] = mapped_column(JSON)
    #: the roles with the ``emergency`` capability the requester held then
    roles: Mapped[list[str]] = mapped_column(JSON)
    client_id: Mapped[str] = mapped_column(String(64))
    network_address: Mapped[str | None] = mapped_column(String(128))
    #: the fresh multi-factor login the grant was given on
    auth_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    #: ``open``, ``justified`` or ``not-justified``
    review_state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    reviewer_id: Mapped[str | None] = mapped_column(String(128))
    reviewer_username: Mapped[str | None] = mapped_column(String(256))
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    review_comment: Mapped[str | None] = mapped_column(Text)
    #: the end of the grant is in the audit trail (``break_glass.stop``, written once by ``serve``)
    stop_recorded: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
