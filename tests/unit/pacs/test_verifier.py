"""Verifier: RFC 8725 negative cases, JWKS refresh, revocation, cache."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pacs_bridge_double import ISSUER, JWKS_URL, FakeBridge

from bridge.core.errors import VerificationError
from bridge.core.verifier import Verifier, VerifierConfig, bearer_token


def test_valid_token_allowed(bridge: FakeBridge, verifier: Verifier) -> None:
    d = verifier.authorize("Bearer " + bridge.token(), "GET", "/studies/abc")
    assert d.allow and d.permission == "view" and d.subject == "guid-1"


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_alg_none_rejected(bridge: FakeBridge, verifier: Verifier) -> None:
    kid = bridge.ring.active().kid
    token = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{_b64(bridge.claims())}."
    with pytest.raises(VerificationError, match=r"malformed|algorithm"):
        verifier.verify(token)


def test_alg_none_with_signature_rejected(bridge: FakeBridge, verifier: Verifier) -> None:
    kid = bridge.ring.active().kid
    token = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{_b64(bridge.claims())}.AAAA"
    with pytest.raises(VerificationError, match="algorithm"):
        verifier.verify(token)


def test_hs256_signed_with_public_key_rejected(bridge: FakeBridge, verifier: Verifier) -> None:
    active = bridge.ring.active()
    pem = active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": active.kid}
    signing_input = f"{_b64(header)}.{_b64(bridge.claims())}".encode()
    import hashlib
    import hmac

    sig = (
        base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest()).rstrip(b"=").decode()
    )
    with pytest.raises(VerificationError, match="algorithm"):
        verifier.verify(signing_input.decode() + "." + sig)


def test_wrong_typ_rejected(bridge: FakeBridge, verifier: Verifier) -> None:
    with pytest.raises(VerificationError, match="typ"):
        verifier.verify(bridge.ring.sign(bridge.claims(), typ="JWT"))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"aud": "other"}, "audience"),
        ({"iss": "https://evil"}, "issuer"),
        ({"exp": -120}, "expired"),
        ({"nbf": +120}, "not yet valid"),
        ({"jti": None}, "jti"),
        ({"sub": None}, "sub"),
        ({"acr": "1", "amr": ["pwd"]}, "second factor"),
        ({"auth_time": None}, "auth_time"),
    ],
)
def test_claim_checks(bridge: FakeBridge, verifier: Verifier, over: dict, match: str) -> None:
    # times are offsets from now, taken when the test runs (not when the module is collected)
    over = {k: int(time.time()) + v if k in ("exp", "nbf") else v for k, v in over.items()}
    with pytest.raises(VerificationError, match=match):
        verifier.verify(bridge.token(**over))


def test_missing_mfa_is_insufficient_user_authentication(bridge: FakeBridge, verifier: Verifier) -> None:
    d = verifier.authorize("Bearer " + bridge.token(acr="1", amr=["pwd"]), "GET", "/studies")
    assert not d.allow and d.error == "insufficient_user_authentication"


def test_small_leeway_accepts_just_expired(bridge: FakeBridge, verifier: Verifier) -> None:
    verifier.verify(bridge.token(exp=int(time.time()) - 5))


def test_unknown_kid_rejected_after_one_refresh(bridge: FakeBridge, verifier: Verifier) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(bridge.claims(), stranger, algorithm="ES256", headers={"kid": "nope", "typ": "at+jwt"})
    with pytest.raises(VerificationError, match="kid"):
        verifier.verify(token)
    with pytest.raises(VerificationError, match="kid"):
        verifier.verify(token)
    assert bridge.calls.count(JWKS_URL) == 1  # rate-limited: the second unknown kid did not refetch


def test_rotation_new_kid_triggers_refresh_old_tokens_still_valid(
    bridge: FakeBridge, verifier: Verifier
) -> None:
    old = bridge.token()
    verifier.verify(old)
    bridge.ring.rotate()
    verifier.jwks._attempt_at -= 60  # the rate limit window has passed
    new = bridge.token()
    verifier.verify(new)
    verifier.forget(old)
    verifier.verify(old)
    assert bridge.calls.count(JWKS_URL) == 2


def test_tampered_payload_rejected(bridge: FakeBridge, verifier: Verifier) -> None:
    h, _, s = bridge.token().split(".")
    forged = _b64(bridge.claims(permissions=["view", "delete", "admin"]))
    with pytest.raises(VerificationError, match="signature"):
        verifier.verify(f"{h}.{forged}.{s}")


def test_revoked_jti_rejected_even_when_cached(bridge: FakeBridge, verifier: Verifier) -> None:
    token = bridge.token(jti="to-revoke")
    verifier.verify(token)
    bridge.revoked.append({"jti": "to-revoke", "exp": int(time.time()) + 300})
    with pytest.raises(VerificationError, match="revoked"):
        verifier.verify(token)


def test_revocation_list_unavailable_fails_closed(bridge: FakeBridge) -> None:
    cfg = VerifierConfig(
        issuer=ISSUER,
        audience="pacs",
        jwks_url=JWKS_URL,
        revocation_url=ISSUER + "/revocations",
        revocation_refresh_seconds=0,
        revocation_max_stale_seconds=0.01,
    )
    v = Verifier(cfg, fetch=bridge.fetch)
    token = bridge.token()
    v.verify(token)
    bridge.down = True
    time.sleep(0.02)
    with pytest.raises(VerificationError, match="failing closed"):
        v.verify(token)


def test_cache_hit_is_fast_and_skips_signature(bridge: FakeBridge, verifier: Verifier) -> None:
    cfg = VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=JWKS_URL)
    v = Verifier(cfg, fetch=bridge.fetch)
    token = bridge.token()
    v.verify(token)
    n = 5000
    t0 = time.perf_counter()
    for _ in range(n):
        v.verify(token)
    per_hit = (time.perf_counter() - t0) / n
    assert v.stats["verified"] == 1 and v.stats["hits"] == n
    assert per_hit < 20e-6, per_hit


def test_cached_token_still_expires(bridge: FakeBridge) -> None:
    now = [time.time()]
    v = Verifier(
        VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=JWKS_URL),
        fetch=bridge.fetch,
        clock=lambda: now[0],
    )
    token = bridge.token()
    v.verify(token)
    now[0] += 400
    with pytest.raises(VerificationError, match="expired"):
        v.verify(token)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic abc",
        "Bearer",
        "Bearer a.b.c extra",
        "Bearer a.b.c, Bearer a.b.c",
        "Bearer " + "a" * 9000,
        "Bearer not-a-jwt",
    ],
)
def test_garbage_authorization_fails_closed(header: str | None, verifier: Verifier) -> None:
    d = verifier.authorize(header, "GET", "/studies")
    assert not d.allow and d.error


def test_bearer_scheme_case_insensitive() -> None:
    assert bearer_token("bEaReR a.b.c") == "a.b.c"


def test_unknown_route_and_missing_permission_denied(bridge: FakeBridge, verifier: Verifier) -> None:
    token = "Bearer " + bridge.token(permissions=["view"])
    assert not verifier.authorize(token, "GET", "/no/such/route").allow
    d = verifier.authorize(token, "DELETE", "/studies/x")
    assert not d.allow and d.permission == "delete" and d.error == "insufficient_scope"


def test_config_refuses_hmac_and_plain_http() -> None:
    with pytest.raises(ValueError, match="algorithms"):
        VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=JWKS_URL, algorithms=("HS256",))
    with pytest.raises(ValueError, match="jwks_url"):
        VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url="http://x/jwks")


def test_first_request_waits_for_a_revocation_pull_already_under_way(bridge: FakeBridge) -> None:
    """A fresh verifier (plugin start or config reload) whose background thread is pulling the list
    must not fail closed for the request that arrives meanwhile."""
    import threading

    from pacs_bridge_double import REVOKED_URL

    started, release = threading.Event(), threading.Event()

    def slow_fetch(url: str, body: bytes | None, headers: dict) -> bytes:
        if url == REVOKED_URL:
            started.set()
            release.wait(5)
        return bridge.fetch(url, body, headers)

    v = Verifier(VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=JWKS_URL, revocation_url=REVOKED_URL),
                 fetch=slow_fetch)
    background = threading.Thread(target=v.refresh_revocations)
    background.start()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    v.verify(bridge.token())  # waits for the background pull instead of failing closed
    background.join(5)
