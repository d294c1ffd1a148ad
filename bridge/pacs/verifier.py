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
  ``client_id`` present; the MFA rule of :mod:`bridge.tokens.mfa` holds.
* ``jti`` not revoked: the bridge's revocation list is pulled every ``revocation_refresh_seconds``
  (fail closed when it is older than ``revocation_max_stale_seconds``), or each token is
  introspected (RFC 7662) and re-checked at the same interval.

A verified token is cached under a hash of the token until it expires, so a viewer fetching
hundreds of images costs one dictionary lookup per request, not one signature check.

The parse / signature / claim core (:func:`parse_jws`, :func:`check_signature`,
:func:`check_claims`, :class:`VerifiedCache`) is also what the token service uses for the Keycloak
tokens it exchanges: one verification core, two rule sets.

Decisions go through the one route table, :mod:`bridge.pacs.routes`: unknown routes are denied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from bridge.pacs import routes
from bridge.tokens import mfa

#: token types accepted in the header (RFC 9068 section 2.1)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
DEFAULT_ALGORITHMS = ("ES256", "RS256", "EdDSA")
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")
#: an Authorization header longer than this is refused before any parsing
MAX_AUTHORIZATION_LENGTH = 8192

Fetch = Callable[[str, bytes | None, Mapping[str, str]], bytes]


class VerificationError(Exception):
    """The token is not acceptable; ``error`` is the RFC 6750 / RFC 9470 error code."""

    def __init__(self, reason: str, error: str = "invalid_token"):
        super().__init__(reason)
        self.reason = reason
        self.error = error


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
class VerifiedToken:
    claims: dict[str, Any]
    jti: str
    exp: float
    recheck_at: float  # introspection mode: when to ask the bridge again


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str
    permission: str | None = None
    error: str | None = None  # RFC 6750 error code when the token itself was the problem
    subject: str | None = None


def decide(
    claims: Mapping[str, Any],
    method: str,
    path: str,
    query: Mapping[str, str | Iterable[str]] | None = None,
) -> Decision:
    """Allow iff the route's rule is satisfied by the permissions the token carries (a rule may
    need several, e.g. ``modify`` + ``download``); unknown routes are denied.

    ``query``: the request's query parameters when they are not in ``path`` (Orthanc hands its
    filter the path and a ``get`` dictionary apart); some rules depend on them (WADO-URI).
    """
    route = routes.route_for(method, path, query)
    sub = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    if route is None:
        return Decision(
            False, f"no rule for {method.upper()} {path.split('?', 1)[0]}: denied", None, None, sub
        )
    held = claims.get("permissions")
    names: list[Any] = held if isinstance(held, list) else []  # a non-string entry never matches
    granted = route.granted(names)
    if granted is not None:
        return Decision(True, route.allow_reason, granted, None, sub)
    missing = " + ".join(route.missing(names))
    return Decision(
        False, f"missing permission {missing} ({route.what})", route.permission.value, "insufficient_scope", sub
    )


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


def _default_fetch(ca_file: str | None, timeout: float) -> Fetch:
    context = ssl.create_default_context(cafile=ca_file)

    def fetch(url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST" if body else "GET")  # noqa: S310
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            return bytes(resp.read(2_000_000))

    return fetch


#: a compact JWS: three non-empty unpadded base64url segments (one match for the whole token)
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
#: PyJWT's own algorithm implementations (signature check, ECDSA raw<->DER); the same call in PyJWT 2.6
_ALGORITHM_OBJECTS = jwt.algorithms.get_default_algorithms()


def _b64decode(segment: str) -> bytes:
    """base64url -> bytes for a segment :data:`_COMPACT_JWS` already validated (alphabet checked,
    so the plain decoder cannot skip anything); cheaper than ``urlsafe_b64decode``."""
    return binascii.a2b_base64((segment + "=" * (-len(segment) % 4)).encode().translate(_FROM_URLSAFE))


def parse_jws(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Split and decode a compact JWS strictly (unpadded base64url only, JSON objects):
    ``(header, claims, signing_input, signature)``, nothing verified yet.

    Why not ``jwt.decode``: PyJWT 2.15 validates base64url one character at a time in Python,
    which costs more than the ECDSA check itself (and, on a 1.4 kB Keycloak token, more than the
    RSA check); the signature is still checked by PyJWT's algorithm objects
    (:func:`check_signature`), and the claims by :func:`check_claims` with PyJWT's semantics.
    """
    if _COMPACT_JWS.fullmatch(token) is None:
        raise VerificationError("malformed token")
    parts = token.split(".")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        raise VerificationError("malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise VerificationError("malformed token")
    return header, claims, token[: len(parts[0]) + 1 + len(parts[1])].encode(), signature


def check_signature(
    header: Mapping[str, Any], signing_input: bytes, signature: bytes, keys: JwksCache, algorithms: tuple[str, ...]
) -> None:
    """RFC 8725 header rules and the signature: ``alg`` pinned *and* equal to the key's own
    ``alg`` (no ``none``, no HMAC with a public key), no ``crit``, ``kid`` names a key of
    ``keys``; raises VerificationError."""
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in algorithms:
        raise VerificationError("algorithm not allowed")
    if "crit" in header:
        raise VerificationError("critical header extensions are not supported")
    if not isinstance(kid, str):
        raise VerificationError("token has no kid")
    key_alg, key = keys.key(kid)
    if alg != key_alg:
        raise VerificationError("algorithm does not match the key")
    try:
        valid = _ALGORITHM_OBJECTS[key_alg].verify(signing_input, key, signature)
    except Exception:
        valid = False
    if not valid:
        raise VerificationError("bad signature")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_claims(
    claims: Mapping[str, Any],
    issuer: str,
    audience: str,
    leeway: float,
    now: float,
    required: tuple[str, ...] = REQUIRED_CLAIMS,
) -> None:
    """RFC 9068 section 4 / RFC 8725 claim checks (exact iss, aud contains ours, times with leeway).

    Cheap (no crypto), so callers that cache a verified token run it again on every cache hit."""
    for name in required:
        if claims.get(name) in (None, ""):
            raise VerificationError(f"token lacks claim {name}")
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _number(claims[name]):
            raise VerificationError(f"claim {name} is not a number")
    if claims.get("iss") != issuer:
        raise VerificationError("token from another issuer")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise VerificationError("token is for another audience")
    if "exp" in claims and claims["exp"] + leeway <= now:
        raise VerificationError("token expired")
    if claims.get("nbf", 0) > now + leeway:
        raise VerificationError("token not yet valid")
    if claims.get("iat", 0) > now + leeway:
        raise VerificationError("token issued in the future")


def token_digest(token: str) -> bytes:
    """The cache key of a token (a hash: the cache never holds the bearer token itself)."""
    return hashlib.blake2b(token.encode(), digest_size=20).digest()


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


class JwksCache:
    """The signing keys of one issuer, fetched from its JWKS URL and cached.

    An unknown ``kid`` (a rotation) refreshes the set, but at most once per ``min_refresh_seconds``
    so that tokens with made-up ``kid`` values cannot turn the verifier into a load generator
    against the issuer.  Keys with an ``alg`` outside the pinned list, or not for signing, are
    ignored.  Also used by the token service for Keycloak's keys.
    """

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        algorithms: tuple[str, ...],
        min_refresh_seconds: float = 30.0,
        max_age_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.url = url
        self.fetch = fetch
        self.algorithms = algorithms
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str, tuple[str, Any]] = {}
        self._loaded_at = float("-inf")
        self._attempt_at = float("-inf")
        self._lock = threading.Lock()

    def _load(self) -> None:
        self._attempt_at = self.clock()
        self.fetches += 1
        try:
            data = json.loads(self.fetch(self.url, None, {"Accept": "application/json"}))
        except Exception:  # keep the old keys; an unknown kid stays unknown
            return
        keys: dict[str, tuple[str, Any]] = {}
        for entry in data.get("keys", []) if isinstance(data, dict) else []:
            kid, alg = entry.get("kid"), entry.get("alg")
            if not kid or alg not in self.algorithms or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = (alg, jwt.PyJWK(entry, alg).key)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
        self._keys = keys
        self._loaded_at = self._attempt_at

    def key(self, kid: str) -> tuple[str, Any]:
        """``(alg, key)`` for ``kid``; raises VerificationError when the issuer has no such key.

        A thread that does not know ``kid`` waits for the lock before deciding: another thread may
        be fetching the set right now (a fresh process's first requests arrive together, or a
        rotation), and the rate limit's timestamp is set when a fetch *starts*; deciding without
        the lock failed those requests with "unknown signing key" while the fetch was under way.
        Threads whose key is known never wait for a periodic refresh.
        """
        now = self.clock()
        if (
            now - self._loaded_at > self.max_age_seconds
            and now - self._attempt_at >= self.min_refresh_seconds
        ):
            with self._lock:
                now = self.clock()
                if now - self._loaded_at > self.max_age_seconds and now - self._attempt_at >= self.min_refresh_seconds:
                    self._load()
        found = self._keys.get(kid)
        if found is None:
            with self._lock:  # unknown kid: a fetch under way, or a rotation (refresh once, rate-limited)
                found = self._keys.get(kid)
                if found is None and self.clock() - self._attempt_at >= self.min_refresh_seconds:
                    self._load()
                    found = self._keys.get(kid)
        if found is None:
            raise VerificationError("unknown signing key (kid)")
        return found


class Verifier:
    """Thread-safe; create one per process and share it."""

    def __init__(
        self,
        config: VerifierConfig,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.fetch = fetch or _default_fetch(config.ca_file, config.http_timeout_seconds)
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
                if "sub" in e and _number(e.get("not_before"))
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
                hit = VerifiedToken(
                    hit.claims, hit.jti, hit.exp, now + self.config.revocation_refresh_seconds
                )
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
        return VerifiedToken(claims, jti, float(claims["exp"]), recheck)

    def forget(self, token: str) -> None:
        """Drop a token from the cache (tests, or after an explicit revocation seen locally)."""
        self._cache.pop(token_digest(token))

    # ------------------------------------------------------------------ one call per request

    def authorize(self, authorization: str | None, method: str, path: str) -> Decision:
        """Parse, verify and decide; never raises (any unexpected error is a denial)."""
        try:
            verified = self.verify(bearer_token(authorization))
            return decide(verified.claims, method, path)
        except VerificationError as exc:
            return Decision(False, exc.reason, None, exc.error)
        except Exception as exc:  # fail closed
            return Decision(False, f"verifier error: {type(exc).__name__}", None, "invalid_token")
