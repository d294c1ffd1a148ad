"""Signing keys: kid = RFC 7638 thumbprint, encryption at rest, rotation keeps old keys until expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from joserfc import jwk as joserfc_jwk

from bridge.tokens.keys import (
    ALGORITHMS,
    KeyEncryptor,
    KeyRing,
    MemoryKeyRepository,
    SigningKeyError,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def ring(alg: str = "ES256", clock: Clock | None = None, repo: MemoryKeyRepository | None = None) -> KeyRing:
    return KeyRing(
        repo or MemoryKeyRepository(),
        KeyEncryptor.from_secret(KeyEncryptor.generate_secret()),
        algorithm=alg,
        max_token_lifetime=3600,
        refresh_seconds=0,
        clock=clock or Clock(),
    )


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_sign_sets_kid_typ_and_verifies_with_published_key(alg: str) -> None:
    r = ring(alg)
    token = r.sign({"sub": "x"})
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == alg
    (published,) = r.jwks()["keys"]
    assert (
        published["kid"]
        == header["kid"]
        == joserfc_jwk.import_key(
            {k: v for k, v in published.items() if k not in ("kid", "alg", "use")}
        ).thumbprint()
    )
    assert "d" not in published and "p" not in published  # public only
    key = jwt.PyJWK(published).key
    assert jwt.decode(token, key, algorithms=[alg])["sub"] == "x"


def test_private_key_encrypted_at_rest_and_bound_to_kid() -> None:
    repo = MemoryKeyRepository()
    secret = KeyEncryptor.generate_secret()
    r = KeyRing(repo, KeyEncryptor.from_secret(secret), refresh_seconds=0)
    r.active()
    (rec,) = repo.all()
    assert b"PRIVATE" not in rec.private_key_encrypted
    # another KEK cannot read it
    other = KeyRing(repo, KeyEncryptor.from_secret(KeyEncryptor.generate_secret()), refresh_seconds=0)
    with pytest.raises(SigningKeyError, match="cannot decrypt"):
        other.active()
    # the ciphertext cannot be moved to another kid
    with pytest.raises(SigningKeyError):
        KeyEncryptor.from_secret(secret).decrypt(rec.private_key_encrypted, "another-kid")


@pytest.mark.parametrize("bad", ["", "not base64 !!", "c2hvcnQ="])
def test_bad_key_encryption_key_is_named(bad: str) -> None:
    with pytest.raises(SigningKeyError, match=r"tokens\.key_encryption_key"):
        KeyEncryptor.from_secret(bad)


def test_rotation_keeps_old_key_until_last_token_expired_then_drops_it() -> None:
    clock = Clock()
    r = ring(clock=clock)
    old = r.active().kid
    clock.now += timedelta(minutes=5)
    new = r.rotate().kid
    assert new != old and r.active().kid == new
    assert {k["kid"] for k in r.jwks()["keys"]} == {old, new}
    clock.now += timedelta(seconds=3599)
    assert {k["kid"] for k in r.jwks()["keys"]} == {old, new}
    clock.now += timedelta(seconds=2)
    assert {k["kid"] for k in r.jwks()["keys"]} == {new}
    assert r.prune() == [old]
    assert [rec.kid for rec in r.records()] == [new]


def test_cache_is_refreshed_from_repository_after_rotation_elsewhere() -> None:
    clock = Clock()
    repo = MemoryKeyRepository()
    secret = KeyEncryptor.generate_secret()
    worker = KeyRing(repo, KeyEncryptor.from_secret(secret), refresh_seconds=3600, clock=clock)
    cli = KeyRing(repo, KeyEncryptor.from_secret(secret), refresh_seconds=0, clock=clock)
    first = worker.active().kid
    second = cli.rotate().kid
    assert worker.active().kid == first  # cached
    worker.invalidate()
    assert worker.active().kid == second


def test_algorithm_change_creates_key_of_new_algorithm() -> None:
    repo = MemoryKeyRepository()
    secret = KeyEncryptor.generate_secret()
    es = KeyRing(repo, KeyEncryptor.from_secret(secret), algorithm="ES256", refresh_seconds=0)
    es.active()
    ed = KeyRing(repo, KeyEncryptor.from_secret(secret), algorithm="EdDSA", refresh_seconds=0)
    assert ed.active().algorithm == "EdDSA"
    assert len(ed.jwks()["keys"]) == 2


def test_unsupported_algorithm_refused() -> None:
    with pytest.raises(SigningKeyError, match=r"tokens\.algorithm"):
        ring("HS256")


def test_retired_key_leaves_jwks_on_time_even_with_a_long_cache() -> None:
    """Workers cache the ring for `refresh_seconds`; a retired key must still vanish at its not_after."""
    clock = Clock()
    r = KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()),
                max_token_lifetime=60, refresh_seconds=3600, clock=clock)
    old = r.active().kid
    new = r.rotate().kid
    assert {k["kid"] for k in r.jwks()["keys"]} == {old, new}
    clock.now += timedelta(seconds=61)
    assert {k["kid"] for k in r.jwks()["keys"]} == {new}


def test_jwks_lists_a_key_another_worker_just_created() -> None:
    """Two web server workers share the database: one's JWKS must publish the other's new key at once."""
    repo, secret, clock = MemoryKeyRepository(), KeyEncryptor.generate_secret(), Clock()
    a = KeyRing(repo, KeyEncryptor.from_secret(secret), refresh_seconds=3600, clock=clock)
    b = KeyRing(repo, KeyEncryptor.from_secret(secret), refresh_seconds=3600, clock=clock)
    first = a.active().kid
    assert {k["kid"] for k in a.jwks()["keys"]} == {first}
    second = b.rotate().kid
    assert {k["kid"] for k in a.jwks()["keys"]} == {first, second}


# --------------------------------------------------------------------------- only keys we can vouch for


def test_jwks_withholds_a_key_the_kek_cannot_decrypt(caplog: pytest.LogCaptureFixture) -> None:
    """A row written with another KEK (or by someone without it) is never published."""
    repo, clock = MemoryKeyRepository(), Clock()
    ours = ring(repo=repo, clock=clock)
    ours.active()
    clock.now += timedelta(seconds=1)
    foreign = ring(repo=repo, clock=clock).create_record()  # a different KEK
    repo.add(foreign)
    reported: list[tuple[str, str]] = []
    ours.on_unusable = lambda kid, why: reported.append((kid, why))
    kids = {k["kid"] for k in ours.jwks()["keys"]}
    assert foreign.kid not in kids and ours.active().kid in kids
    assert reported == [(foreign.kid, "its private key does not decrypt with tokens.key_encryption_key")]
    assert foreign.kid in caplog.text and "BEGIN" not in caplog.text
    ours.jwks()
    assert len(reported) == 1  # reported once per row, not on every JWKS request


def test_jwks_withholds_a_key_whose_public_half_was_swapped() -> None:
    """A row whose public JWK was replaced (same kid, valid ciphertext) must not be published."""
    import dataclasses

    repo, clock = MemoryKeyRepository(), Clock()
    r = ring(repo=repo, clock=clock)
    record = r.active()  # retired by the rotation below, still published until its last token expires
    clock.now += timedelta(seconds=1)
    new = r.rotate()
    attacker = ring(clock=clock).create_record()
    stored = repo.records[record.kid]
    repo.records[record.kid] = dataclasses.replace(stored, public_jwk={**attacker.public_jwk, "kid": record.kid})
    assert {k["kid"] for k in r.jwks()["keys"]} == {new.kid}


def test_a_planted_newer_active_key_does_not_become_the_signer() -> None:
    repo, clock = MemoryKeyRepository(), Clock()
    r = ring(repo=repo, clock=clock)
    ours = r.active()
    clock.now += timedelta(seconds=1)
    repo.add(ring(clock=clock).create_record())  # newer, active, another KEK
    r.invalidate()
    assert r.active().kid == ours.kid
    assert jwt.get_unverified_header(r.sign({"sub": "x"}))["kid"] == ours.kid


def test_jwks_withholds_a_garbage_ciphertext() -> None:
    import dataclasses

    repo, clock = MemoryKeyRepository(), Clock()
    r = ring(repo=repo, clock=clock)
    r.active()
    clock.now += timedelta(seconds=1)
    good = r.create_record()
    repo.add(dataclasses.replace(good, private_key_encrypted=b"\x01" + b"\x00" * 40, retired_at=clock.now,
                                 not_after=clock.now + timedelta(hours=1)))
    assert good.kid not in {k["kid"] for k in r.jwks()["keys"]}
