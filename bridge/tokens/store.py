"""The token service's tables, behind the small interfaces the rest of ``bridge.tokens`` uses.

``signing_keys``, ``revoked_tokens`` and ``role_assignments`` are defined by
:mod:`bridge.store.models`; this module only reads and writes them, so the key ring, the
revocation list and the grant lookup can be tested with in-memory doubles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, bindparam, delete, func, or_, select, update

from bridge.store.db import connection, session, write_session
from bridge.store.models import RevokedToken, RoleAssignment, SigningKey, SubjectRevocation
from bridge.tokens.keys import KeyEncryptor, KeyRecord, KeyRing

if TYPE_CHECKING:
    from bridge.config import Settings

# --------------------------------------------------------------------------- signing keys


class SqlKeyRepository:
    """:class:`bridge.tokens.keys.KeyRepository` over the ``signing_keys`` table."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def all(self) -> list[KeyRecord]:
        with session(self.engine) as s:
            rows = s.scalars(select(SigningKey)).all()
            return [
                KeyRecord(
                    r.kid,
                    r.alg,
                    dict(r.public_jwk),
                    bytes(r.private_key_encrypted),
                    r.created_at,
                    r.retired_at,
                    r.not_after,
                )
                for r in rows
            ]

    def add(self, record: KeyRecord) -> None:
        with session(self.engine) as s:
            s.add(
                SigningKey(
                    kid=record.kid,
                    alg=record.algorithm,
                    private_key_encrypted=record.private_key_encrypted,
                    public_jwk=record.public_jwk,
                    created_at=record.created_at,
                    retired_at=record.retired_at,
                    not_after=record.not_after,
                )
            )

    def retire(self, kid: str, retired_at: datetime, not_after: datetime) -> None:
        with session(self.engine) as s:
            s.execute(
                update(SigningKey)
                .where(SigningKey.kid == kid)
                .values(retired_at=retired_at, not_after=not_after)
            )

    def delete(self, kid: str) -> None:
        with session(self.engine) as s:
            s.execute(delete(SigningKey).where(SigningKey.kid == kid))

    def rewrap(self, kid: str, old: bytes, new: bytes) -> bool:
        """Replace the ciphertext ``old`` of ``kid`` by ``new`` (compare-and-set: a row changed
        meanwhile is left alone and reported False)."""
        with session(self.engine) as s:
            done = s.execute(update(SigningKey).where(SigningKey.kid == kid,
                                                      SigningKey.private_key_encrypted == old)
                             .values(private_key_encrypted=new))
            return bool(done.rowcount)


# --------------------------------------------------------------------------- revocations


#: how long a subject watermark is kept when the caller does not say (>= any token lifetime in use)
DEFAULT_SUBJECT_WATERMARK_SECONDS = 24 * 3600


class RevocationStore(Protocol):
    """Revoked tokens: single ``jti`` values (RFC 7009) and per-subject watermarks (logout:
    every token of ``sub`` issued at or before ``not_before`` is revoked)."""

    def revoke(self, jti: str, exp: int) -> None: ...

    def is_revoked(self, jti: str) -> bool: ...

    def active(self) -> list[tuple[str, int]]: ...

    def revoke_subject(self, subject: str, not_before: int, exp: int) -> None: ...

    def subjects(self) -> dict[str, tuple[int, int]]: ...

    def watermark(self, subjects: Iterable[str]) -> int | None: ...


def revoked_by_subject(store: RevocationStore, claims: Any) -> bool:
    """True when the token's ``sub`` has a watermark at or after its ``iat`` (the one rule; the
    PACS verifier applies the same to the list it pulls)."""
    mark = store.subjects().get(str(claims.get("sub")))
    iat = claims.get("iat")
    return mark is not None and isinstance(iat, int | float) and iat <= mark[0]


class SqlRevocationStore:
    """Revoked ``jti`` values, persisted until the token would have expired anyway.

    ``is_revoked`` and ``active`` are on hot paths (introspection, the verifiers' pull), so the
    set is cached for ``cache_seconds``; a revocation made in this process is visible at once.
    """

    def __init__(self, engine: Engine, cache_seconds: float = 2.0):
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._cache: dict[str, int] = {}
        self._loaded_at = float("-inf")
        self._subjects: dict[str, tuple[int, int]] = {}
        self._subjects_loaded_at = float("-inf")
        self._lock = threading.Lock()

    def revoke(self, jti: str, exp: int) -> None:
        expires = datetime.fromtimestamp(int(exp), UTC)
        with write_session(self.engine) as s:
            if s.get(RevokedToken, jti) is None:
                s.add(RevokedToken(jti=jti, exp=expires))
            s.execute(delete(RevokedToken).where(RevokedToken.exp < datetime.now(UTC)))
        with self._lock:
            self._cache[jti] = int(exp)

    def _current(self) -> dict[str, int]:
        if time.monotonic() - self._loaded_at > self.cache_seconds:
            with self._lock:
                if time.monotonic() - self._loaded_at <= self.cache_seconds:
                    return self._cache  # another thread reloaded while this one waited
                with session(self.engine) as s:
                    rows = s.execute(
                        select(RevokedToken.jti, RevokedToken.exp).where(
                            RevokedToken.exp >= datetime.now(UTC)
                        )
                    ).all()
                self._cache = {j: int(e.timestamp()) for j, e in rows}
                self._loaded_at = time.monotonic()
        return self._cache

    def is_revoked(self, jti: str) -> bool:
        return jti in self._current()

    def active(self) -> list[tuple[str, int]]:
        now = time.time()
        return [(j, e) for j, e in self._current().items() if e > now]

    def revoke_subject(self, subject: str, not_before: int, exp: int) -> None:
        """Raise ``subject``'s watermark (never lower it: a later logout must not un-revoke)."""
        nb, ex = datetime.fromtimestamp(int(not_before), UTC), datetime.fromtimestamp(int(exp), UTC)
        with write_session(self.engine) as s:
            row = s.get(SubjectRevocation, subject)
            if row is None:
                s.add(SubjectRevocation(subject_id=subject, not_before=nb, exp=ex))
            else:
                row.not_before, row.exp = max(row.not_before, nb), max(row.exp, ex)
            s.execute(delete(SubjectRevocation).where(SubjectRevocation.exp < datetime.now(UTC)))
        with self._lock:
            self._subjects_loaded_at = float("-inf")

    def subjects(self) -> dict[str, tuple[int, int]]:
        """Live watermarks ``{subject: (not_before, exp)}``, cached like the jti set."""
        if time.monotonic() - self._subjects_loaded_at > self.cache_seconds:
            with self._lock:
                if time.monotonic() - self._subjects_loaded_at <= self.cache_seconds:
                    return dict(self._subjects)  # reloaded by another thread meanwhile
                self._load_subjects()
        return dict(self._subjects)

    def reload_subjects(self) -> None:
        """Read the watermarks now, whatever the cache's age: a background refresher (the gateway's,
        bridge/web/gateway/maintenance.py) calls this before the cache expires, so no request waits on
        the query.  Under the lock, like :meth:`subjects`: a same-process :meth:`revoke_subject` that
        commits meanwhile still resets the cache after this read."""
        with self._lock:
            self._load_subjects()

    def _load_subjects(self) -> None:
        """The watermarks from the database into the cache (the caller holds the lock)."""
        with session(self.engine) as s:
            rows = s.execute(
                select(SubjectRevocation.subject_id, SubjectRevocation.not_before, SubjectRevocation.exp)
                .where(SubjectRevocation.exp >= datetime.now(UTC))
            ).all()
        self._subjects = {sub: (int(nb.timestamp()), int(ex.timestamp())) for sub, nb, ex in rows}
        self._subjects_loaded_at = time.monotonic()

    def watermark(self, subjects: Iterable[str]) -> int | None:
        """The highest live watermark of any of ``subjects``, read from the database now (no cache).

        Why uncached: issuing is the one place where a logout in *another* worker must already
        count (the exchange of a pre-logout Keycloak token, a browser session after a role
        removal); one primary-key read per issue is the price."""
        wanted = [s for s in dict.fromkeys(subjects) if s]
        if not wanted:
            return None
        with connection(self.engine) as conn:  # Core, prebuilt statement: on every issue
            mark = conn.execute(_WATERMARK, {"subs": wanted, "now": datetime.now(UTC)}).scalar()
        return None if mark is None else int(mark.timestamp())


_WATERMARK = select(func.max(SubjectRevocation.not_before)).where(
    SubjectRevocation.subject_id.in_(bindparam("subs", expanding=True)), SubjectRevocation.exp >= bindparam("now"))


def revoke_subject(engine: Engine, subject: str, *, max_token_lifetime: int | None = None) -> None:
    """Revoke every unexpired PACS token of ``subject`` (the stable directory id): logout, a
    disabled or removed account (called by the sync and the back-channel logout).

    A watermark, not a list of jtis: tokens are stateless, so "everything issued up to now" is
    the only complete answer; it is kept for ``max_token_lifetime`` (the longest a token issued
    now-or-earlier can live), published in ``/revocations`` and honoured by every verifier.
    """
    if not subject:
        raise ValueError("subject: revoke_subject needs the stable directory id")
    now = int(time.time())
    keep = max_token_lifetime or DEFAULT_SUBJECT_WATERMARK_SECONDS
    SqlRevocationStore(engine, cache_seconds=0).revoke_subject(subject, now, now + int(keep))


# --------------------------------------------------------------------------- role assignments


@dataclass(frozen=True)
class Assignment:
    role: str
    scopes: dict[str, Any]


class AssignmentSource(Protocol):
    """Who holds which PACS role (written by the sync)."""

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]: ...


class SqlAssignmentSource:
    """Reads ``role_assignments`` by the stable directory id; for a local Keycloak account (no
    directory id) also hand-made (unmanaged) rows by username."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]:
        if not subject_id and not username:
            return []
        # prebuilt statements over a Core connection: this read is on every issue, uncached, and
        # building the select (and its cache key) cost more than running it
        stmt = _BY_SUBJECT if not username else _BY_USERNAME if not subject_id else _BY_EITHER
        with connection(self.engine) as conn:
            rows: Iterable[Any] = conn.execute(stmt, {"sub": subject_id, "name": username}).all()
        return [Assignment(role, dict(scopes or {})) for role, scopes in rows]


_ROLES = select(RoleAssignment.role, RoleAssignment.scopes)
_BY_SUBJECT = _ROLES.where(RoleAssignment.subject_id == bindparam("sub"))
# by username only rows granted by hand: the sync's rows belong to a directory account, and a
# local Keycloak account that happens to share its username must not inherit them
_BY_NAME = (RoleAssignment.username == bindparam("name")) & RoleAssignment.managed.is_(False)
_BY_USERNAME = _ROLES.where(_BY_NAME)
_BY_EITHER = _ROLES.where(or_(RoleAssignment.subject_id == bindparam("sub"), _BY_NAME))


# --------------------------------------------------------------------------- from the configuration


def key_ring(settings: Settings, engine: Any | None = None) -> KeyRing:
    """The key ring over the store's ``signing_keys`` table (the web app and ``pacs-bridge keys``)."""
    from bridge.store.db import engine_for

    return KeyRing(
        SqlKeyRepository(engine or engine_for(settings)),
        KeyEncryptor.from_settings(settings),
        algorithm=settings.tokens.algorithm,
        max_token_lifetime=settings.tokens.max_lifetime_seconds,
    )
