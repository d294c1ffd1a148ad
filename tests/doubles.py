"""In-memory stand-ins for the token service's stores, for tests that exercise pure logic.

Why here and not in bridge/: production always uses the SQL stores (bridge/tokens/store.py); these
doubles implement the same Protocols (RevocationStore, AssignmentSource, SessionEnds) without a database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.core import grants as core_grants
from bridge.tokens import claims as claims_mod
from bridge.tokens.store import Assignment


def one_grant(roles: Iterable[str] = (), permissions: Iterable[str] = (), departments: Iterable[str] = (),
              institutions: Iterable[str] = ()) -> claims_mod.Grant:
    """What the token service would pass to ``claims.build`` for one role (the first of ``roles``)
    with exactly ``permissions`` (not expanded: a test may want download without view) in one scope."""
    roles = tuple(roles)
    scope = {k: list(v) for k, v in (("departments", departments), ("institutions", institutions)) if v}
    grant = core_grants.grant_from_claim({"kind": "role", "role": roles[0] if roles else "test-role",
                                          "permissions": sorted(str(p) for p in permissions), "scope": scope})
    assert grant is not None
    return claims_mod.Grant(roles, (grant,))


@dataclass
class MemoryRevocationStore:
    revoked: dict[str, int] = field(default_factory=dict)
    by_subject: dict[str, tuple[int, int]] = field(default_factory=dict)

    def revoke(self, jti: str, exp: int) -> None:
        self.revoked[jti] = int(exp)

    def is_revoked(self, jti: str) -> bool:
        return jti in self.revoked

    def active(self) -> list[tuple[str, int]]:
        now = time.time()
        return [(j, e) for j, e in self.revoked.items() if e > now]

    def revoke_subject(self, subject: str, not_before: int, exp: int) -> None:
        old = self.by_subject.get(subject, (0, 0))
        self.by_subject[subject] = (max(old[0], int(not_before)), max(old[1], int(exp)))

    def subjects(self) -> dict[str, tuple[int, int]]:
        now = time.time()
        return {s: m for s, m in self.by_subject.items() if m[1] > now}

    def watermark(self, subjects: Iterable[str]) -> int | None:
        marks = [m[0] for s, m in self.subjects().items() if s in set(subjects)]
        return max(marks) if marks else None


@dataclass
class MemoryAssignmentSource:
    by_subject: dict[str, list[Assignment]] = field(default_factory=dict)

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]:
        return list(self.by_subject.get(subject_id or "", []) or self.by_subject.get(username or "", []))


@dataclass
class EndedSessions:
    """Ended Keycloak ``sid`` values in this process's memory (a deployment
    runs several workers and must share them, see :mod:`bridge.oidc.state`)."""

    ttl_seconds: float = 24 * 3600
    sids: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def end(self, sid: str) -> None:
        now = time.time()
        with self.lock:
            self.sids = {s: t for s, t in self.sids.items() if t > now}
            self.sids[sid] = now + self.ttl_seconds

    def ended(self, sid: str | None) -> bool:
        return sid is not None and self.sids.get(sid, 0) > time.time()
