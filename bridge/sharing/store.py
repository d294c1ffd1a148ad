"""The shares table: create, find, list, revoke, count uses, and the wrong-passcode counters.

Why every state change is one conditional UPDATE: a use, a revocation and the last allowed use may
race between workers and instances; ``UPDATE ... WHERE revoked_at IS NULL AND use_count < max_uses``
lets the database decide once, so the 21st opening of a 20-use share fails even when two arrive
together.  Passcodes are never stored: only an scrypt hash (:func:`hash_passcode`), slow on
purpose, so a copy of the table does not give the passcodes of live links back.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.engine import Engine

from bridge.directory.model import normalize_dn
from bridge.store.db import connection
from bridge.store.models import RoleAssignment, Share, SharePasscodeFailure

#: scrypt cost (RFC 7914): 2^15 x 8 x 1 takes ~50 ms and 32 MiB per check: slow for a guesser with a
#: stolen table, fine for a recipient typing it once per session
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
PASSCODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed from paper
PASSCODE_LENGTH = 12  # 60 bits


def new_passcode() -> str:
    """A random passcode of 12 letters and digits (groups of four, dashes ignored when checked)."""
    raw = "".join(secrets.choice(PASSCODE_ALPHABET) for _ in range(PASSCODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, PASSCODE_LENGTH, 4))


def _canonical(passcode: str) -> bytes:
    return passcode.replace("-", "").replace(" ", "").strip().upper().encode()


def hash_passcode(passcode: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(_canonical(passcode), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=64 * 1024 * 1024, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_passcode(passcode: str, stored: str | None) -> bool:
    """Constant-time comparison of ``passcode`` with a :func:`hash_passcode` value."""
    if not stored or not isinstance(passcode, str) or len(passcode) > 200:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(_canonical(passcode), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def link_hash(link_id: str) -> str:
    """What the table keeps of a link's random part (a database reader cannot rebuild the link)."""
    return hashlib.sha256(link_id.encode()).hexdigest()


@dataclass(frozen=True)
class ShareRecord:
    """One row, detached from the session (what the service and the endpoints pass around)."""

    id: str
    kind: str
    study_uid: str
    patient_id: str | None
    created_by: str
    created_by_name: str | None
    recipient_kind: str
    recipient: str
    recipient_name: str | None
    recipient_org: str | None
    recipient_country: str | None
    rule_id: str
    purpose: str
    legal_basis: str
    transfer_basis: str | None
    permissions: list[str]
    deidentified: bool
    secret: bytes | None
    link_hash: str | None
    passcode_hash: str | None
    passcode_version: int
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    revoked_by: str | None
    max_uses: int | None
    use_count: int

    def state(self, now: dt.datetime) -> str:
        """``active``, ``revoked``, ``expired`` or ``used-up`` (in that order of precedence)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.max_uses is not None and self.use_count >= self.max_uses:
            return "used-up"
        return "active"


_FIELDS = [f.name for f in fields(ShareRecord)]


def _record(row: Share) -> ShareRecord:
    return ShareRecord(**{name: getattr(row, name) for name in _FIELDS})


def _record_row(row: Any) -> ShareRecord:
    """A Core result row (the column types still apply: UTC datetimes, JSON lists)."""
    return ShareRecord(**{name: row[name] for name in _FIELDS})


class ShareStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, **values: object) -> ShareRecord:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session, session.begin():
            row = Share(**values)
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, share_id: str) -> ShareRecord | None:
        return self._one(Share.id == share_id)

    def by_link(self, link_id: str) -> ShareRecord | None:
        return self._one(and_(Share.link_hash == link_hash(link_id), Share.kind == "external"))

    def _one(self, cond: object) -> ShareRecord | None:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            row = session.scalars(select(Share).where(cond)).first()  # type: ignore[arg-type]
            return _record(row) if row is not None else None

    def created_by(self, subject: str) -> list[ShareRecord]:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            rows = session.scalars(select(Share).where(Share.created_by == subject).order_by(Share.created_at))
            return [_record(r) for r in rows]

    def revoke(self, share_id: str, by: str, now: dt.datetime) -> bool:
        """True when this call revoked it (False: unknown or already revoked)."""
        with self.engine.begin() as conn:
            res = conn.execute(update(Share).where(Share.id == share_id, Share.revoked_at.is_(None))
                               .values(revoked_at=now, revoked_by=by))
            return bool(res.rowcount)

    def renew_passcode(self, share_id: str, passcode_hash: str) -> int | None:
        """Store a new passcode hash, raise the version (older sessions end), clear every lockout."""
        with self.engine.begin() as conn:
            res = conn.execute(update(Share).where(Share.id == share_id, Share.kind == "external")
                               .values(passcode_hash=passcode_hash, passcode_version=Share.passcode_version + 1))
            if not res.rowcount:
                return None
            conn.execute(delete(SharePasscodeFailure).where(SharePasscodeFailure.share_id == share_id))
            version = conn.execute(select(Share.passcode_version).where(Share.id == share_id)).scalar_one()
            return int(version)

    def use(self, share_id: str, now: dt.datetime) -> bool:
        """Count one use if the share is live and has a use left (atomic: see the module docstring)."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(Share)
                .where(Share.id == share_id, Share.revoked_at.is_(None), Share.expires_at > now,
                       or_(Share.max_uses.is_(None), Share.use_count < Share.max_uses))
                .values(use_count=Share.use_count + 1))
            return bool(res.rowcount)

    # ---- wrong passcodes

    def failures(self, share_id: str, source: str) -> int:
        with self.engine.connect() as conn:
            n = conn.execute(select(SharePasscodeFailure.failures).where(
                SharePasscodeFailure.share_id == share_id, SharePasscodeFailure.source == source)).scalar()
            return int(n or 0)

    def total_failures(self, share_id: str) -> int:
        """Wrong passcodes (and attempts being checked) of a share over every source."""
        from sqlalchemy import func

        with self.engine.connect() as conn:
            n = conn.execute(select(func.coalesce(func.sum(SharePasscodeFailure.failures), 0)).where(
                SharePasscodeFailure.share_id == share_id)).scalar()
            return int(n or 0)

    def forgive(self, share_id: str, source: str) -> None:
        """Give back the slot an attempt took (it had the right passcode)."""
        with self.engine.begin() as conn:
            conn.execute(update(SharePasscodeFailure).where(
                SharePasscodeFailure.share_id == share_id, SharePasscodeFailure.source == source,
                SharePasscodeFailure.failures > 0).values(failures=SharePasscodeFailure.failures - 1))

    def fail(self, share_id: str, source: str, now: dt.datetime) -> int:
        """Count one wrong passcode from ``source``; the new count."""
        with self.engine.begin() as conn:
            res = conn.execute(update(SharePasscodeFailure).where(
                SharePasscodeFailure.share_id == share_id, SharePasscodeFailure.source == source)
                .values(failures=SharePasscodeFailure.failures + 1, updated_at=now))
            if not res.rowcount:
                try:
                    with conn.begin_nested():
                        conn.execute(SharePasscodeFailure.__table__.insert().values(
                            share_id=share_id, source=source, failures=1, updated_at=now))
                except Exception:  # another worker inserted the row first: count on it
                    conn.execute(update(SharePasscodeFailure).where(
                        SharePasscodeFailure.share_id == share_id, SharePasscodeFailure.source == source)
                        .values(failures=SharePasscodeFailure.failures + 1, updated_at=now))
            n = conn.execute(select(SharePasscodeFailure.failures).where(
                SharePasscodeFailure.share_id == share_id, SharePasscodeFailure.source == source)).scalar()
            return int(n or 0)

    # ---- internal shares as grants

    def live_internal(self, subject_id: str, now: dt.datetime,
                      groups: Iterable[str] | None = None) -> list[ShareRecord]:
        """Live internal shares whose recipient is ``subject_id`` or one of the groups the subject is
        a member of.  The groups are the directory groups the sync recorded for the subject
        (``role_assignments.source_group_dn``, nested membership resolved by the sync) unless given."""
        live = and_(Share.kind == "internal", Share.revoked_at.is_(None), Share.expires_at > now)
        # Core over the connection the token issue pinned (bridge/store/db.py: one checkout per issue)
        with connection(self.engine) as conn:
            rows = [_record_row(r) for r in conn.execute(select(Share.__table__).where(live)).mappings()]
            if not rows:
                return []
            mine = [r for r in rows if r.recipient_kind == "user" and r.recipient == subject_id]
            group_rows = [r for r in rows if r.recipient_kind == "group"]
            if group_rows:
                stmt = select(RoleAssignment.source_group_dn).where(
                    RoleAssignment.subject_id == subject_id).distinct()
                dns = set(groups) if groups is not None else {
                    normalize_dn(dn) for dn in conn.execute(stmt).scalars() if dn}
                mine += [r for r in group_rows if r.recipient in dns]
            return mine

    def members_known(self, group_dn: str) -> bool:
        """Does the sync record any member of this group (normalised DN)?"""
        with self.engine.connect() as conn:
            for dn in conn.execute(select(RoleAssignment.source_group_dn).distinct()).scalars():
                if dn and normalize_dn(dn) == group_dn:
                    return True
        return False

    def holds_any_role(self, subject_id: str, roles: frozenset[str]) -> bool:
        """Does ``subject_id`` hold one of ``roles`` now (an assignment row, managed or by hand)?"""
        if not roles:
            return False
        with connection(self.engine) as conn:
            return conn.execute(select(RoleAssignment.id).where(
                RoleAssignment.subject_id == subject_id, RoleAssignment.role.in_(sorted(roles))).limit(1)).first() \
                is not None

    def user(self, key: str) -> tuple[str, str, set[str]] | None:
        """(directory id, username, group DNs) of a user the sync knows, by directory id or username."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(RoleAssignment.subject_id, RoleAssignment.username,
                                       RoleAssignment.source_group_dn)
                                .where(or_(RoleAssignment.subject_id == key, RoleAssignment.username == key),
                                       RoleAssignment.managed.is_(True))).all()
        ids = {r[0] for r in rows}
        if len(ids) != 1:
            return None  # unknown, or a username that names two accounts: ambiguous, refused
        sub = ids.pop()
        return sub, rows[0][1], {normalize_dn(r[2]) for r in rows if r[2] and r[0] == sub}
