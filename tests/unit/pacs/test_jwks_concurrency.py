"""JwksCache under concurrent first use (regression: the token bench's sporadic 400s).

A fresh web server worker receives several exchanges at once; the first thread starts the JWKS
fetch and the others, seeing the fetch's start time inside the rate-limit window, answered
"unknown signing key (kid)" instead of waiting for that fetch to finish.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bridge.core.errors import VerificationError
from bridge.core.jwks import JwksCache

KID = "k1"


def _jwks() -> bytes:
    jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    return json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}).encode()


class SlowIssuer:
    """A JWKS endpoint whose answer is held back until the test releases it."""

    def __init__(self) -> None:
        self.body = _jwks()
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        self.calls += 1
        self.started.set()
        assert self.release.wait(5), "test did not release the fetch"
        return self.body


def _in_thread(cache: JwksCache, kid: str, out: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            out["alg"] = cache.key(kid)[0]
        except VerificationError as exc:
            out["error"] = str(exc)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_requests_during_the_first_fetch_wait_for_it() -> None:
    issuer = SlowIssuer()
    cache = JwksCache("https://idp/jwks", issuer, ("ES256",), min_refresh_seconds=30)
    first: dict[str, object] = {}
    second: dict[str, object] = {}
    t1 = _in_thread(cache, KID, first)
    assert issuer.started.wait(5)
    t2 = _in_thread(cache, KID, second)  # arrives while the fetch is under way
    t2.join(0.2)
    assert t2.is_alive(), "the second request must wait for the fetch, not answer at once"
    issuer.release.set()
    t1.join(5)
    t2.join(5)
    assert first == {"alg": "ES256"}
    assert second == {"alg": "ES256"}
    assert issuer.calls == 1  # the waiting thread reused the fetch


def test_made_up_kid_still_rate_limited_after_the_fetch() -> None:
    issuer = SlowIssuer()
    issuer.release.set()
    cache = JwksCache("https://idp/jwks", issuer, ("ES256",), min_refresh_seconds=30)
    assert cache.key(KID)[0] == "ES256"
    for _ in range(3):
        with pytest.raises(VerificationError, match="unknown signing key"):
            cache.key("made-up")
    assert issuer.calls == 1
