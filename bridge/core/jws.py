"""Compact JWS: strict parsing, the header rules and the signature check, the claim checks.

One verification core for two rule sets: the PACS verifier (:mod:`bridge.core.verifier`) and the
token service, which checks the Keycloak tokens it exchanges with the same functions.  Standard
library plus PyJWT's algorithm objects only (present in Debian's PyJWT 2.6), because the Orthanc
plugin imports it.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jwt

from bridge.core.errors import VerificationError

if TYPE_CHECKING:
    from bridge.core.jwks import JwksCache

REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")

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


def is_number(value: Any) -> bool:
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
        if name in claims and not is_number(claims[name]):
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

