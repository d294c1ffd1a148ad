"""The cache on the exchange path: what a hit skips (only the signature) and what it must still
enforce (expiry, iss, aud, azp, typ).  Role assignments are not cached at all (see
test_workers_share_state.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.core.errors import VerificationError
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator

KC_ISS = "https://kc.test/realms/hospital"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**jwt.get_algorithm_by_name("RS256").to_jwk(KEY.public_key(), as_dict=True), "kid": "k", "alg": "RS256"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def token(**over: Any) -> str:
    now = int(time.time())
    claims = {"iss": KC_ISS, "aud": ["pacs-bridge", "account"], "azp": "pacs-viewer", "sub": "u1", "typ": "Bearer",
              "exp": now + 120, "iat": now, "jti": "j1"}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, KEY, algorithm="RS256",
                      headers={"kid": "k"})


def validator(clock: Clock, **settings: Any) -> KeycloakTokenValidator:
    s = {"issuer": KC_ISS, "audience": "pacs-bridge", "allowed_clients": frozenset({"pacs-viewer"}), **settings}
    return KeycloakTokenValidator(KeycloakSettings(**s), fetch=lambda u, b, h: json.dumps({"keys": [JWK]}).encode(),
                                  clock=clock)


def test_second_validation_is_a_cache_hit_without_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    v = validator(clock)
    tok = token()
    assert v.validate(tok)["sub"] == "u1" and len(v.cache) == 1

    def no_signature_check(*args: Any) -> None:
        raise AssertionError("signature checked again on a cache hit")

    monkeypatch.setattr("bridge.tokens.service.check_signature", no_signature_check)
    assert v.validate(tok)["sub"] == "u1"


def test_cached_token_still_expires() -> None:
    clock = Clock()
    v = validator(clock)
    tok = token()
    v.validate(tok)
    clock.now += 120 + 31  # past exp + leeway
    with pytest.raises(VerificationError, match="expired"):
        v.validate(tok)


def test_cached_claims_rechecked_against_current_rules() -> None:
    """A hit re-applies azp/aud/iss: the cache holds claims, not a verdict."""
    clock = Clock()
    v = validator(clock)
    tok = token()
    v.validate(tok)
    strict = validator(clock, allowed_clients=frozenset({"other"}))
    strict.cache = v.cache  # same cached entry, stricter rules
    with pytest.raises(VerificationError, match="may not exchange"):
        strict.validate(tok)
    other_aud = validator(clock, audience="someone-else")
    other_aud.cache = v.cache
    with pytest.raises(VerificationError, match="audience"):
        other_aud.validate(tok)


def test_refused_tokens_are_not_cached() -> None:
    clock = Clock()
    v = validator(clock)
    for bad in (token(azp="evil"), token(typ="ID"), token(iss="https://evil"), token()[:-4] + "AAAA"):
        with pytest.raises(VerificationError):
            v.validate(bad)
    assert len(v.cache) == 0
