"""The key that signs audit checkpoints (Ed25519).

Why Ed25519 and not an HMAC: verification needs only the public key, so an auditor (or a second
site) can check the trail without being able to forge checkpoints, and the bridge's database
administrator cannot re-sign a rewritten chain unless they also hold the key file.

The private key lives in a PEM file (mode 0600; ``audit.checkpoint_key_file``, default
``var/audit-checkpoint.key`` next to the SQLite store); the public key is written beside it as
``<file>.pub``.  Keep a copy of the ``.pub`` file off the bridge host.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bridge.errors import InputError

ALG = "Ed25519"


class KeyFileError(InputError):
    """The checkpoint key file is missing, unreadable or not an Ed25519 key."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class CheckpointKey:
    """A public key, and the private key when this process may sign."""

    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None

    @property
    def kid(self) -> str:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, payload: bytes) -> str:
        if self.private is None:
            raise KeyFileError("this checkpoint key has no private part; cannot sign")
        return _b64(self.private.sign(payload))

    def verify(self, payload: bytes, signature: str) -> bool:
        try:
            self.public.verify(_unb64(signature), payload)
            return True
        except (InvalidSignature, ValueError):
            return False

    @classmethod
    def generate(cls) -> CheckpointKey:
        priv = Ed25519PrivateKey.generate()
        return cls(priv.public_key(), priv)

    @classmethod
    def load_or_create(cls, path: Path) -> CheckpointKey:
        """Load the private key file, creating it (0600) and its ``.pub`` on first use."""
        path = Path(path)
        if not path.exists():
            key = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            assert key.private is not None
            pem = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            public_path(path).write_bytes(key.public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            return key
        try:
            priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"audit checkpoint key {path}: cannot load ({exc})") from None
        if not isinstance(priv, Ed25519PrivateKey):
            raise KeyFileError(f"audit checkpoint key {path}: not an Ed25519 private key")
        return cls(priv.public_key(), priv)

    @classmethod
    def load_public(cls, path: Path) -> CheckpointKey:
        """Load for verification only: a ``.pub`` PEM, or the private key file (its public part)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"audit checkpoint key {path}: cannot read ({exc.strerror})") from None
        if b"PRIVATE KEY" in data:
            return cls(cls.load_or_create(path).public)
        try:
            pub = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"audit checkpoint key {path}: cannot load ({exc})") from None
        if not isinstance(pub, Ed25519PublicKey):
            raise KeyFileError(f"audit checkpoint key {path}: not an Ed25519 public key")
        return cls(pub)


def public_path(private_path: Path) -> Path:
    return Path(str(private_path) + ".pub")
