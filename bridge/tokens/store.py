"""The token service's tables, behind the small interfaces the rest of ``bridge.tokens`` uses.

``signing_keys``, ``revoked_tokens`` and ``role_assignments`` are defined by
:mod:`bridge.store.models`; this module only reads and writes them, so the key ring, the
revocation list and the grant lookup can be tested with in-memory doubles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, delete, or_, select, update

from bridge.store.db import session
from bridge.store.models import RevokedToken, RoleAssignment, SigningKey
from bridge.tokens.keys import KeyRecord

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


# --------------------------------------------------------------------------- revocations


class RevocationStore(Protocol):
    def revoke(self, jti: str, exp: int) -> None: ...

    def is_revoked(self, jti: str) -> bool: ...

    def active(self) -> list[tuple[str, int]]: ...


@dataclass
class MemoryRevocationStore:
    revoked: dict[str, int] = field(default_factory=dict)

    def revoke(self, jti: str, exp: int) -> None:
        self.revoked[jti] = int(exp)

    def is_revoked(self, jti: str) -> bool:
        return jti in self.revoked

    def active(self) -> list[tuple[str, int]]:
        now = time.time()
        return [(j, e) for j, e in self.revoked.items() if e > now]


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
        self._lock = threading.Lock()

    def revoke(self, jti: str, exp: int) -> None:
        expires = datetime.fromtimestamp(int(exp), UTC)
        with session(self.engine) as s:
            if s.get(RevokedToken, jti) is None:
                s.add(RevokedToken(jti=jti, exp=expires))
            s.execute(delete(RevokedToken).where(RevokedToken.exp < datetime.now(UTC)))
        with self._lock:
            self._cache[jti] = int(exp)

    def _current(self) -> dict[str, int]:
        if time.monotonic() - self._loaded_at > self.cache_seconds:
            with self._lock:
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


# --------------------------------------------------------------------------- role assignments


@dataclass(frozen=True)
class Assignment:
    role: str
    scopes: dict[str, Any]


class AssignmentSource(Protocol):
    """Who holds which PACS role (written by the sync)."""

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]: ...


@dataclass
class MemoryAssignmentSource:
    by_subject: dict[str, list[Assignment]] = field(default_factory=dict)

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]:
        return list(self.by_subject.get(subject_id or "", []) or self.by_subject.get(username or "", []))


class SqlAssignmentSource:
    """Reads ``role_assignments`` by the stable directory id, or by username when the Keycloak
    token does not carry that id."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]:
        conds: list[Any] = []
        if subject_id:
            conds.append(RoleAssignment.subject_id == subject_id)
        if username:
            conds.append(RoleAssignment.username == username)
        if not conds:
            return []
        with session(self.engine) as s:
            rows: Iterable[Any] = s.execute(
                select(RoleAssignment.role, RoleAssignment.scopes).where(or_(*conds))
            ).all()
            return [Assignment(role, dict(scopes or {})) for role, scopes in rows]
