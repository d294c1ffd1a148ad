"""Validation of OIDC Back-Channel Logout 1.0 logout tokens (section 2.6).

A logout token is a JWT Keycloak POSTs to ``/backchannel-logout``.  Checked here, in the spec's
order: signature with a key of the realm JWKS (the algorithm pinned to that key's), ``iss`` =
the realm, ``aud`` contains our client id, ``iat`` present and recent, ``jti`` present and not
seen before (replay), ``events`` holding the back-channel logout event as a JSON object,
``sub`` and/or ``sid``, and no ``nonce`` (so an ID token can never pass as a logout token).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from bridge.core.errors import VerificationError
from bridge.core.jwks import JwksCache

EVENT = "http://schemas.openid.net/event/backchannel-logout"


class LogoutTokenError(Exception):
    """The logout token is not acceptable; the message says which rule failed (no token content)."""


class Replay(Protocol):
    """Remembers accepted ``jti`` values: :class:`bridge.oidc.state.SqlReplayCache` in the app
    (shared by every worker), :class:`ReplayCache` in unit tests."""

    def first_time(self, jti: str, keep_until: float) -> bool: ...


@dataclass
class ReplayCache:
    """``jti`` values seen by this process, kept until their token is too old to be accepted anyway
    (unit tests: one process's memory would let a replay through to another worker)."""

    seen: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first_time(self, jti: str, keep_until: float) -> bool:
        now = time.time()
        with self.lock:
            self.seen = {j: t for j, t in self.seen.items() if t > now}
            if jti in self.seen:
                return False
            self.seen[jti] = keep_until
            return True


@dataclass
class LogoutTokenValidator:
    issuer: str
    client_id: str
    keys: JwksCache
    max_age_seconds: int = 300
    leeway_seconds: int = 30
    replay: Replay = field(default_factory=ReplayCache)
    clock: Callable[[], float] = time.time

    def validate(self, token: str) -> dict[str, Any]:
        """The logout token's claims; raises :class:`LogoutTokenError`."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise LogoutTokenError("not a JWT") from None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not isinstance(alg, str):
            raise LogoutTokenError("header: kid and alg required")
        try:
            key_alg, key = self.keys.key(kid)
        except VerificationError:
            raise LogoutTokenError("unknown signing key") from None
        if alg != key_alg:
            raise LogoutTokenError("algorithm does not match the key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[key_alg], audience=self.client_id, issuer=self.issuer,
                leeway=self.leeway_seconds, options={"require": ["iss", "aud", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise LogoutTokenError(f"invalid: {type(exc).__name__}") from None
        now = self.clock()
        iat = claims["iat"]
        if not isinstance(iat, int | float) or now - iat > self.max_age_seconds:
            raise LogoutTokenError("iat too old")
        events = claims.get("events")
        if not isinstance(events, Mapping) or not isinstance(events.get(EVENT), Mapping):
            raise LogoutTokenError("events: the back-channel logout event is missing")
        if "nonce" in claims:
            raise LogoutTokenError("nonce present: not a logout token")
        if not isinstance(claims.get("sub"), str) and not isinstance(claims.get("sid"), str):
            raise LogoutTokenError("neither sub nor sid")
        if not self.replay.first_time(str(claims["jti"]), float(iat) + self.max_age_seconds + self.leeway_seconds):
            raise LogoutTokenError("jti replayed")
        return claims
