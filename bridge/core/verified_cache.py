"""Tokens already verified, by a hash of the token: a hit skips only the signature check."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VerifiedToken:
    claims: dict[str, Any]
    jti: str
    exp: float
    recheck_at: float  # introspection mode: when to ask the bridge again
    #: the PACS token's grants, parsed once (:func:`bridge.core.grants.from_claims`): a request
    #: costs no parse; ``grants_until``: when the first grant's own ``exp`` passes (parse again then)
    grants: tuple[Any, ...] = ()
    grants_until: float = float("inf")


class VerifiedCache:
    """Verified tokens by :func:`token_digest` until they expire (plus leeway), at most ``size``.

    Only the signature check is skipped on a hit: callers re-apply their time-dependent rules
    (expiry, MFA age, revocation) to the cached claims.  When full, expired entries go first,
    then the oldest.  Plain dict operations: safe under the GIL without a lock on the hit path.
    """

    def __init__(self, size: int, leeway: float):
        self.size = size
        self.leeway = leeway
        self._entries: dict[bytes, VerifiedToken] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> VerifiedToken | None:
        hit = self._entries.get(digest)
        return hit if hit is not None and hit.exp + self.leeway > now else None

    def put(self, digest: bytes, verified: VerifiedToken, now: float) -> None:
        if len(self._entries) >= self.size:
            with self._lock:
                horizon = now - self.leeway
                entries = {k: v for k, v in self._entries.items() if v.exp > horizon}
                while len(entries) >= self.size:  # all alive: drop the oldest
                    entries.pop(next(iter(entries)))
                self._entries = entries
        self._entries[digest] = verified

    def pop(self, digest: bytes) -> None:
        self._entries.pop(digest, None)

