"""Signing keys of the PACS token service: generation, encryption at rest, rotation, JWKS.

Why this shape:

* ``kid`` is the RFC 7638 thumbprint of the public key, so a key's name cannot drift from the
  key itself and two bridges that share a database agree on it.
* Private keys never sit in the database in clear: each is AES-256-GCM encrypted with the
  key-encryption key (``tokens.key_encryption_key`` / ``_file``), the ``kid`` bound in as
  associated data so a ciphertext cannot be swapped onto another row.
* Rotation never breaks a token in flight: the new key signs from now on, the old one stays in
  the JWKS until ``not_after`` = rotation time + the maximum token lifetime, then it is dropped.
* Signing is on the hot path of ``/token``: the key ring parses keys once and keeps the
  ``cryptography`` key objects; it re-reads the repository only every ``refresh_seconds`` so that
  a ``pacs-bridge keys rotate`` run in another process reaches every worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwk as joserfc_jwk

from bridge.kek import KeyEncryptionError, KeyEncryptor  # the KEK lives in bridge/kek.py (shared with the audit trail)

log = logging.getLogger(__name__)

ALGORITHMS: tuple[str, ...] = ("ES256", "RS256", "EdDSA")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


#: a key problem an operator must fix (bad key-encryption key, undecryptable row, bad algorithm);
#: the same class as the KEK's own errors, so ``except SigningKeyError`` keeps catching those
SigningKeyError = KeyEncryptionError


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- key material


def generate_private_key(algorithm: str) -> PrivateKey:
    """A fresh private key for ``algorithm`` (ES256: P-256, RS256: 3072-bit RSA, EdDSA: Ed25519)."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise SigningKeyError(
        f"tokens.algorithm: unsupported algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
    )


def public_jwk(public_key: PublicKey, algorithm: str) -> dict[str, Any]:
    """The public JWK (with ``kid`` = RFC 7638 thumbprint, ``alg`` and ``use``) of a key."""
    jwk_dict: dict[str, Any] = jwt.get_algorithm_by_name(algorithm).to_jwk(public_key, as_dict=True)
    jwk_dict = {k: v for k, v in jwk_dict.items() if k not in ("kid", "alg", "use", "key_ops")}
    kid = joserfc_jwk.import_key(jwk_dict).thumbprint()
    return {**jwk_dict, "kid": kid, "alg": algorithm, "use": "sig"}


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class KeyRecord:
    """One signing key as stored.  Active while ``retired_at`` is None; published until ``not_after``."""

    kid: str
    algorithm: str
    public_jwk: dict[str, Any]
    private_key_encrypted: bytes
    created_at: datetime
    retired_at: datetime | None = None
    not_after: datetime | None = None

    def published(self, now: datetime) -> bool:
        return self.not_after is None or self.not_after > now


class KeyRepository(Protocol):
    """Where key records live (the store's ``signing_keys`` table, or memory in tests)."""

    def all(self) -> list[KeyRecord]: ...

    def add(self, record: KeyRecord) -> None: ...

    def retire(self, kid: str, retired_at: datetime, not_after: datetime) -> None: ...

    def delete(self, kid: str) -> None: ...

    def rewrap(self, kid: str, old: bytes, new: bytes) -> bool: ...


@dataclass
class MemoryKeyRepository:
    """Process-local repository (unit tests, benchmarks)."""

    records: dict[str, KeyRecord] = field(default_factory=dict)

    def all(self) -> list[KeyRecord]:
        return list(self.records.values())

    def add(self, record: KeyRecord) -> None:
        self.records[record.kid] = record

    def retire(self, kid: str, retired_at: datetime, not_after: datetime) -> None:
        self.records[kid] = replace(self.records[kid], retired_at=retired_at, not_after=not_after)

    def delete(self, kid: str) -> None:
        self.records.pop(kid, None)

    def rewrap(self, kid: str, old: bytes, new: bytes) -> bool:
        rec = self.records.get(kid)
        if rec is None or rec.private_key_encrypted != old:
            return False
        self.records[kid] = replace(rec, private_key_encrypted=new)
        return True


# --------------------------------------------------------------------------- the key ring


@dataclass(frozen=True)
class SigningKey:
    """A parsed key ready to sign (never leaves the process)."""

    kid: str
    algorithm: str
    private_key: PrivateKey


@dataclass(frozen=True)
class _Snapshot:
    active: SigningKey | None
    loaded_at: float


class KeyRing:
    """The signing keys as the token service uses them: cached, parsed, rotated in place."""

    def __init__(
        self,
        repository: KeyRepository,
        encryptor: KeyEncryptor,
        algorithm: str = "ES256",
        max_token_lifetime: int = 3600,
        refresh_seconds: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ):
        if algorithm not in ALGORITHMS:
            raise SigningKeyError(
                f"tokens.algorithm: unsupported {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
            )
        self.repository = repository
        self.encryptor = encryptor
        self.algorithm = algorithm
        self.max_token_lifetime = max_token_lifetime
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._usable: dict[tuple[str, bytes, str], bool] = {}
        #: called with (kid, why) when a stored key is withheld from the JWKS (the app audits it)
        self.on_unusable: Callable[[str, str], None] | None = None

    # ---- reading

    def _load(self) -> _Snapshot:
        now = self.clock()
        records = sorted(self.repository.all(), key=lambda r: r.created_at)
        published = [r for r in records if r.published(now)]
        actives = [r for r in published if r.retired_at is None and r.algorithm == self.algorithm]
        active: SigningKey | None = None
        if actives:
            # the newest key this bridge can vouch for: a planted row must not become the signer
            # (nor stop signing); no usable key at all is an operator error (wrong KEK): say so
            newest = next((r for r in reversed(actives) if self.usable(r)), None)
            if newest is None:
                raise SigningKeyError(
                    f"signing key {actives[-1].kid}: cannot decrypt (wrong tokens.key_encryption_key, "
                    "or the row was altered)"
                )
            der = self.encryptor.decrypt(newest.private_key_encrypted, newest.kid)
            key = serialization.load_der_private_key(der, password=None)
            active = SigningKey(newest.kid, newest.algorithm, key)  # type: ignore[arg-type]
        return _Snapshot(active, time.monotonic())

    def _stale(self, snap: _Snapshot | None) -> bool:
        return snap is None or time.monotonic() - snap.loaded_at > self.refresh_seconds

    def snapshot(self) -> _Snapshot:
        snap = self._snapshot
        if self._stale(snap):
            with self._lock:
                snap = self._snapshot
                if self._stale(snap):
                    snap = self._snapshot = self._load()
        assert snap is not None
        return snap

    def invalidate(self) -> None:
        """Forget the cache (after a rotation in this process)."""
        with self._lock:
            self._snapshot = None

    def active(self) -> SigningKey:
        """The key that signs new tokens; created on first use (or when the algorithm changed)."""
        snap = self.snapshot()
        if snap.active is None:
            self.rotate()
            snap = self.snapshot()
        assert snap.active is not None
        return snap.active

    def jwks(self) -> dict[str, Any]:
        """The public JWK set: the active key and every retired key still within its ``not_after``,
        but only keys this bridge can vouch for (:meth:`usable`).

        Read from the repository on every call, not from this worker's cache: another worker (or
        `keys rotate`) may have just created the key it signs with, and a verifier that finds an
        unknown ``kid`` here would refuse that worker's tokens until its next JWKS refresh."""
        self.active()
        now = self.clock()
        records = sorted(self.repository.all(), key=lambda r: r.created_at)
        return {"keys": [dict(r.public_jwk) for r in reversed(records) if r.published(now) and self.usable(r)]}

    def usable(self, record: KeyRecord) -> bool:
        """True when ``record``'s private half decrypts with the current key-encryption key and is
        the private half of the published public key.

        Why: whoever can write the ``signing_keys`` table could otherwise add a public key of their
        own (with any ciphertext) and every PACS would trust tokens signed by it.  A row only this
        bridge's KEK could have encrypted -- AES-GCM with the ``kid`` bound in -- and whose public
        key matches its private key is one the bridge made.  Checked once per row content, then
        remembered; a refused row is logged (its ``kid`` and why, nothing secret) and reported to
        ``on_unusable``."""
        key = (record.kid, record.private_key_encrypted, json.dumps(record.public_jwk, sort_keys=True))
        verdict = self._usable.get(key)
        if verdict is None:
            verdict, why = self._check(record)
            if not verdict:
                log.warning("signing key %s is not published in the JWKS: %s", record.kid, why)
                if self.on_unusable is not None:
                    try:
                        self.on_unusable(record.kid, why)
                    except Exception:  # reporting must not break the JWKS
                        log.exception("reporting the unusable signing key %s failed", record.kid)
            if len(self._usable) > 1000:
                self._usable.clear()
            self._usable[key] = verdict
        return verdict

    def _check(self, record: KeyRecord) -> tuple[bool, str]:
        try:
            der = self.encryptor.decrypt(record.private_key_encrypted, record.kid)
        except SigningKeyError:
            return False, "its private key does not decrypt with tokens.key_encryption_key"
        try:
            private = serialization.load_der_private_key(der, password=None)
            derived = public_jwk(private.public_key(), record.algorithm)  # type: ignore[arg-type]
        except Exception:
            return False, "its private key cannot be read"
        published = {k: v for k, v in record.public_jwk.items() if k not in ("alg", "use", "key_ops")}
        if derived["kid"] != record.kid or {k: v for k, v in derived.items() if k not in ("alg", "use")} != published:
            return False, "its public key is not the public half of its private key"
        return True, ""

    # ---- signing

    def sign(self, claims: dict[str, Any], typ: str = "at+jwt") -> str:
        """A compact JWS of ``claims`` with the active key; header ``typ`` and ``kid`` set."""
        key = self.active()
        return jwt.encode(
            claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": typ}
        )

    # ---- rotation

    def create_record(self, algorithm: str | None = None) -> KeyRecord:
        alg = algorithm or self.algorithm
        private = generate_private_key(alg)
        pub = public_jwk(private.public_key(), alg)
        der = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return KeyRecord(
            kid=pub["kid"],
            algorithm=alg,
            public_jwk=pub,
            private_key_encrypted=self.encryptor.encrypt(der, pub["kid"]),
            created_at=self.clock(),
        )

    def rotate(self, algorithm: str | None = None) -> KeyRecord:
        """Add a new active key; retire the others (published until now + max token lifetime); drop
        keys whose last token has expired."""
        now = self.clock()
        record = self.create_record(algorithm)
        not_after = now + timedelta(seconds=self.max_token_lifetime)
        for old in self.repository.all():
            if old.retired_at is None:
                self.repository.retire(old.kid, now, not_after)
        self.repository.add(record)
        self.prune()
        self.invalidate()
        return record

    def prune(self) -> list[str]:
        """Delete keys no token can still need; returns their kids."""
        now = self.clock()
        gone = [r.kid for r in self.repository.all() if not r.published(now)]
        for kid in gone:
            self.repository.delete(kid)
        if gone:
            self.invalidate()
        return gone

    def records(self) -> list[KeyRecord]:
        return sorted(self.repository.all(), key=lambda r: r.created_at)
