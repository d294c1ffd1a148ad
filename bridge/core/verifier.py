"""Verify PACS tokens and decide requests: a small library for any Python PACS or gateway.

Runs under Debian 12's ``/usr/bin/python3`` with only ``python3-jwt`` (PyJWT 2.6) and
``python3-cryptography`` (38) besides the standard library, so the Orthanc plugin can import it;
nothing here may use a PyJWT feature newer than 2.6 (hence no ``PyJWKClient``: its cache and
refresh rules are not ours).

What a token must pass (RFC 9068 section 4, RFC 8725):

* header ``typ`` is ``at+jwt``; ``alg`` is in the pinned list *and* equals the key's own ``alg``
  (no ``none``, no HMAC-with-the-public-key); ``kid`` names a key of the bridge's JWKS.  An unknown
  ``kid`` refreshes the JWKS once, at most every ``jwks_min_refresh_seconds``.  ``jku``/``x5u``
  headers are ignored: keys come only from the configured JWKS URL.
* ``iss`` and ``aud`` exact; ``exp``/``nbf``/``iat`` with a small leeway; ``sub``, ``jti``,
  ``client_id`` present; a token format version this verifier understands
  (:mod:`bridge.core.token_format`); the MFA rule of :mod:`bridge.core.mfa` holds.
* ``jti`` not revoked: the bridge's revocation list is pulled every ``revocation_refresh_seconds``
  (fail closed when it is older than ``revocation_max_stale_seconds``), or each token is
  introspected (RFC 7662) and re-checked at the same interval.

A verified token is cached under a hash of the token until it expires, so a viewer fetching
hundreds of images costs one dictionary lookup per request, not one signature check.

The parse / signature / claim core (:mod:`bridge.core.jws`, :mod:`bridge.core.jwks`,
:mod:`bridge.core.verified_cache`) is also what the token service uses for the Keycloak
tokens it exchanges: one verification core, two rule sets.

Decisions go through the one route table, :mod:`bridge.core.routes`: unknown routes are denied.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.core import grants as grants_mod
from bridge.core import mfa, routes, token_format
from bridge.core.errors import VerificationError
from bridge.core.grants import Grant
from bridge.core.jwks import Fetch, JwksCache, default_fetch
from bridge.core.jws import check_claims, check_signature, is_number, parse_jws, token_digest
from bridge.core.verified_cache import VerifiedCache, VerifiedToken

#: token types accepted in the header (RFC 9068 section 2.1)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
DEFAULT_ALGORITHMS = ("ES256", "RS256", "EdDSA")
#: an Authorization header longer than this is refused before any parsing
MAX_AUTHORIZATION_LENGTH = 8192


@dataclass(frozen=True)
class VerifierConfig:
    issuer: str
    audience: str
    jwks_url: str
    ca_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: int = 30
    jwks_min_refresh_seconds: float = 30.0
    jwks_max_age_seconds: float = 3600.0
    revocation_url: str | None = None
    introspection_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    revocation_refresh_seconds: float = 10.0
    revocation_max_stale_seconds: float = 300.0
    mfa_rule: mfa.MfaRule | None = field(default_factory=mfa.MfaRule)
    cache_size: int = 10_000
    http_timeout_seconds: float = 3.0

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a.upper() == "NONE" or a.startswith("HS")]
        if bad or not self.algorithms:
            raise ValueError(f"algorithms: only asymmetric algorithms may be pinned, got {self.algorithms!r}")
        for name in ("jwks_url", "revocation_url", "introspection_url"):
            url = getattr(self, name)
            if url and not url.startswith("https://"):
                raise ValueError(f"{name}: must be https:// (keys and revocations must not be forgeable)")


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str
    permission: str | None = None
    error: str | None = None  # RFC 6750 error code when the token itself was the problem
    subject: str | None = None
    #: the grants that each hold everything the route needs (an allowed decision has at least one);
    #: which of them also covers the studies the request touches is the PACS's next question
    holders: tuple[Grant, ...] = ()
    route: routes.Route | None = None


def decide(
    claims: Mapping[str, Any],
    method: str,
    path: str,
    query: Mapping[str, str | Iterable[str]] | None = None,
    grants: tuple[Grant, ...] | None = None,
) -> Decision:
    """Allow iff ONE grant of the token holds everything the route's rule needs (a rule may need
    several, e.g. ``modify`` + ``download``, and they must come from the same grant); unknown routes
    are denied.  The study check (does a holder also cover the studies?) is the caller's:
    :func:`bridge.pacs.gate.judge`.

    ``query``: the request's query parameters when they are not in ``path`` (Orthanc hands its
    filter the path and a ``get`` dictionary apart); some rules depend on them (WADO-URI).
    ``grants``: the token's parsed grants (the verified cache keeps them); parsed from the claims if None.
    """
    route = routes.route_for(method, path, query)
    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    if route is None:
        return Decision(
            False, f"no rule for {method.upper()} {path.split('?', 1)[0]}: denied", None, None, sub
        )
    held = grants_mod.from_claims(claims) if grants is None else grants
    granted: str | None = None  # the name the FIRST holder satisfies the rule with
    holders: tuple[Grant, ...] = ()
    for grant in held:
        name = route.granted(grant.permissions)
        if name is not None:
            if granted is None:
                granted = name
            holders += (grant,)
    if granted is not None:
        return Decision(True, route.allow_reason, granted, None, sub, holders, route)
    union = grants_mod.permissions_of(held)
    if route.granted(union) is not None:
        reason = f"no single grant holds {route.requirement} ({route.what})"
    else:
        reason = f"missing permission {' + '.join(route.missing(union))} ({route.what})"
    return Decision(False, reason, route.permission.value, "insufficient_scope", sub, (), route)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header (scheme case-insensitive, exactly one token)."""
    if not authorization:
        raise VerificationError("no Authorization header", "invalid_request")
    if len(authorization) > MAX_AUTHORIZATION_LENGTH:
        raise VerificationError("Authorization header too long", "invalid_request")
    if "," in authorization:
        raise VerificationError("several credentials in one Authorization header", "invalid_request")
    parts = authorization.strip().split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise VerificationError("Authorization is not a single Bearer token", "invalid_request")
    token = parts[1]
    if token.count(".") != 2:
        raise VerificationError("token is not a JWS compact serialization")
    return token


class Verifier:
    """Thread-safe; create one per process and share it."""

    def __init__(
        self,
        config: VerifierConfig,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.fetch = fetch or default_fetch(config.ca_file, config.http_timeout_seconds)
        self.clock = clock
        self.jwks = JwksCache(
            config.jwks_url,
            self.fetch,
            config.algorithms,
            config.jwks_min_refresh_seconds,
            config.jwks_max_age_seconds,
            clock,
        )
        self._revoked: dict[str, float] = {}
        self._revoked_subjects: dict[str, float] = {}  # sub -> not_before (iat <= it: revoked)
        self._revoked_loaded_at = float("-inf")
        self._cache = VerifiedCache(config.cache_size, config.leeway_seconds)
        self._revocation_lock = threading.Lock()
        self.stats = {"hits": 0, "verified": 0, "revocation_fetches": 0}

    # ------------------------------------------------------------------ revocation

    def refresh_revocations(self, now: float | None = None, max_age: float | None = None) -> None:
        """Pull the revocation list if the last pull is older than ``max_age`` (default
        ``revocation_refresh_seconds``).  The Orthanc plugin calls this from a background thread
        with a shorter ``max_age``, so the list is renewed before a request would find it due
        and no request waits for the fetch while that thread lives."""
        self._refresh_revocations(self.clock() if now is None else now, max_age)

    def _refresh_revocations(self, now: float, max_age: float | None = None) -> None:
        if now - self._revoked_loaded_at < (self.config.revocation_refresh_seconds if max_age is None else max_age):
            return
        never_loaded = self._revoked_loaded_at == float("-inf")
        # someone else refreshing: use the current list meanwhile; with none yet, wait for theirs
        if not self._revocation_lock.acquire(blocking=never_loaded, timeout=10 if never_loaded else -1):
            return
        if never_loaded and self._revoked_loaded_at != float("-inf"):
            self._revocation_lock.release()
            return  # loaded while we waited
        try:
            self.stats["revocation_fetches"] += 1
            data = json.loads(
                self.fetch(self.config.revocation_url or "", None, {"Accept": "application/json"})
            )
            revoked = {
                str(e["jti"]): float(e.get("exp", now + 86400)) for e in data.get("revoked", []) if "jti" in e
            }
            subjects = {
                str(e["sub"]): float(e["not_before"])
                for e in data.get("subjects", [])
                if "sub" in e and is_number(e.get("not_before"))
                and float(e.get("exp", now + 86400)) + self.config.leeway_seconds > now
            }
            self._revoked = {j: exp for j, exp in revoked.items() if exp + self.config.leeway_seconds > now}
            self._revoked_subjects = subjects
            self._revoked_loaded_at = now
        except Exception:  # noqa: S110 - staleness is checked below; the old list stays in force
            pass
        finally:
            self._revocation_lock.release()

    def _check_revocation(self, claims: Mapping[str, Any], now: float) -> None:
        if not self.config.revocation_url:
            return
        self._refresh_revocations(now)
        if now - self._revoked_loaded_at > self.config.revocation_max_stale_seconds:
            raise VerificationError("revocation list unavailable: failing closed", "temporarily_unavailable")
        if str(claims.get("jti")) in self._revoked:
            raise VerificationError("token revoked")
        mark = self._revoked_subjects.get(str(claims.get("sub")))
        if mark is not None and float(claims.get("iat", 0)) <= mark:
            raise VerificationError("token revoked (all tokens of the subject, e.g. logout)")

    def _introspect(self, token: str) -> None:
        cfg = self.config
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        cred = base64.b64encode(f"{cfg.client_id}:{cfg.client_secret}".encode()).decode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {cred}"}
        try:
            answer = json.loads(self.fetch(cfg.introspection_url or "", body, headers))
        except Exception:
            raise VerificationError(
                "introspection unavailable: failing closed", "temporarily_unavailable"
            ) from None
        if answer.get("active") is not True:
            raise VerificationError("token inactive (introspection)")

    # ------------------------------------------------------------------ verification

    def verify(self, token: str) -> VerifiedToken:
        """The verified token, from the cache when seen before; raises VerificationError."""
        digest = token_digest(token)
        now = self.clock()
        hit = self._cache.get(digest, now)
        if hit is not None:
            if now >= hit.recheck_at:
                self._introspect(token)
                hit = replace(hit, recheck_at=now + self.config.revocation_refresh_seconds)
                self._cache.put(digest, hit, now)
            if now >= hit.grants_until:  # a grant's own exp passed: it allows nothing from now on
                parsed = grants_mod.from_claims(hit.claims, now)
                hit = replace(hit, grants=parsed, grants_until=grants_mod.expiry(parsed))
                self._cache.put(digest, hit, now)
            self._check_revocation(hit.claims, now)
            self.stats["hits"] += 1
            return hit
        verified = self._verify_signature_and_claims(token, now)
        self._cache.put(digest, verified, now)
        return verified

    def _verify_signature_and_claims(self, token: str, now: float) -> VerifiedToken:
        cfg = self.config
        header, claims, signing_input, signature = parse_jws(token)
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise VerificationError("wrong token type (typ must be at+jwt)")
        check_signature(header, signing_input, signature, self.jwks, cfg.algorithms)
        check_claims(claims, cfg.issuer, cfg.audience, cfg.leeway_seconds, now)
        token_format.check(claims)
        if cfg.mfa_rule is not None:
            verdict = mfa.check(claims, cfg.mfa_rule, now)
            if not verdict.ok:
                raise VerificationError(verdict.reason, mfa.INSUFFICIENT_USER_AUTHENTICATION)
        jti = str(claims["jti"])
        recheck = float("inf")
        if cfg.introspection_url:
            self._introspect(token)
            recheck = now + cfg.revocation_refresh_seconds
        self._check_revocation(claims, now)
        self.stats["verified"] += 1
        parsed = grants_mod.from_claims(claims, now)
        return VerifiedToken(claims, jti, float(claims["exp"]), recheck, parsed, grants_mod.expiry(parsed))

    def forget(self, token: str) -> None:
        """Drop a token from the cache (tests, or after an explicit revocation seen locally)."""
        self._cache.pop(token_digest(token))

    # ------------------------------------------------------------------ one call per request

    def authorize(self, authorization: str | None, method: str, path: str) -> Decision:
        """Parse, verify and decide; never raises (any unexpected error is a denial)."""
        try:
            verified = self.verify(bearer_token(authorization))
            return decide(verified.claims, method, path, grants=verified.grants)
        except VerificationError as exc:
            return Decision(False, exc.reason, None, exc.error)
        except Exception as exc:  # fail closed
            return Decision(False, f"verifier error: {type(exc).__name__}", None, "invalid_token")
