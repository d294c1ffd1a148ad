"""The key that signs audit checkpoints (Ed25519).

Why Ed25519 and not an HMAC: verification needs only the public key, so an auditor (or a second
site) can check the trail without being able to forge checkpoints, and the bridge's database
administrator cannot re-sign a rewritten chain unless they also hold the key file.

The private key lives in ``audit.checkpoint_key_file`` (mode 0600, default
``var/audit-checkpoint.key`` next to the SQLite store), **encrypted** under the bridge's
key-encryption key (``tokens.key_encryption_key``, AES-256-GCM, bridge/kek.py): a copy of the file
(a backup, a disk image) without the KEK cannot sign checkpoints.  The file is a small JSON
document holding the public key in clear (so verification needs no KEK) and the private key's
ciphertext bound to ``audit-checkpoint:<kid>``.  The public key is also written beside it as
``<file>.pub`` (PEM, plaintext on purpose).  Keep a copy of the ``.pub`` file off the bridge host.

Migration: a file from an older bridge holding an unencrypted PEM private key is read once when
the bridge next signs (it has the KEK then) and rewritten encrypted in place (atomic replace);
a warning is logged.  Why rewrite and not refuse: the key must stay the same (checkpoints already
signed with it must keep verifying), and refusing would only ask the operator to run a command
doing exactly this.  The old plaintext blocks may survive on the disk: on a host whose disk is
not encrypted, also rotate the key material (see docs/encryption.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bridge.errors import InputError
from bridge.kek import KEK_SETTING, KeyEncryptionError, KeyEncryptor

log = logging.getLogger(__name__)

ALG = "Ed25519"
#: the ``format`` member of an encrypted key file
FILE_FORMAT = "pacs-bridge-audit-checkpoint-key/1"


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
    #: public keys of earlier checkpoint keys (``<file>.retired.pub``): they verify the checkpoints
    #: they signed before a rotation, and sign nothing
    retired: tuple[Ed25519PublicKey, ...] = ()

    def for_kid(self, kid: str) -> CheckpointKey | None:
        """The key (this one or a retired one) whose id is ``kid``; None for an unknown key."""
        if kid == self.kid:
            return self
        return next((k for k in (CheckpointKey(r) for r in self.retired) if k.kid == kid), None)

    def with_retired(self, key_file: Path) -> CheckpointKey:
        """This key with the retired public keys kept beside ``key_file`` (if any)."""
        path = retired_path(key_file)
        if not path.exists():
            return self
        found = []
        for block in re.findall(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", _read(path), re.S):
            pub = serialization.load_pem_public_key(block)
            if not isinstance(pub, Ed25519PublicKey):
                raise KeyFileError(f"audit checkpoint key {path}: holds a key that is not Ed25519")
            found.append(pub)
        return replace(self, retired=tuple(found))

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

    def _label(self) -> str:
        """Associated data of the private key's ciphertext: this key, and what it is for."""
        return f"audit-checkpoint:{self.kid}"

    def _encrypted_file(self, encryptor: KeyEncryptor) -> bytes:
        assert self.private is not None
        raw = self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
        doc = {
            "format": FILE_FORMAT,
            "alg": ALG,
            "kid": self.kid,
            "public_key": _b64(self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
            "private_key_encrypted": _b64(encryptor.encrypt(raw, self._label())),
        }
        return (json.dumps(doc, indent=1) + "\n").encode("ascii")

    def _public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def rewrap_file(cls, path: Path, encryptor: KeyEncryptor) -> bool:
        """Re-encrypt the key file under the current KEK when only the previous one opens it (a KEK
        rotation, `pacs-bridge keys rewrap`); True when it was rewritten.  The key itself does not
        change, so every checkpoint keeps verifying."""
        key = cls.load_or_create(path, encryptor)  # opens under either KEK, or names the problem
        _, blob = _parse_encrypted(path, _read(path))
        if encryptor.rewrapped(blob, key._label(), what="audit checkpoint key") is None:
            return False
        _replace(path, key._encrypted_file(encryptor))
        return True

    @classmethod
    def load_or_create(cls, path: Path, encryptor: KeyEncryptor | None) -> CheckpointKey:
        """Load the private key file, creating it (0600, encrypted) and its ``.pub`` on first use;
        a plaintext PEM file of an older bridge is rewritten encrypted (see the module docstring).
        The retired keys beside it come along (they verify, never sign)."""
        return cls._load_or_create(path, encryptor).with_retired(Path(path))

    @classmethod
    def rotate(cls, path: Path, encryptor: KeyEncryptor) -> tuple[str, str]:
        """A new checkpoint signing key; the old public key joins ``<file>.retired.pub`` first, so
        every checkpoint it signed keeps verifying.  Returns (old kid, new kid).  Restart the
        bridge afterwards: running processes sign with the key they loaded (still verifiable)."""
        path = Path(path)
        old = cls.load_or_create(path, encryptor)
        kept = retired_path(path)
        prior = _read(kept) if kept.exists() else b""
        if old.kid not in {CheckpointKey(r).kid for r in old.retired}:
            _replace(kept, prior + old._public_pem(), mode=0o644)
        new = cls.generate()
        _replace(path, new._encrypted_file(encryptor))
        _replace(public_path(path), new._public_pem(), mode=0o644)
        return old.kid, new.kid

    @classmethod
    def _load_or_create(cls, path: Path, encryptor: KeyEncryptor | None) -> CheckpointKey:
        """Load the private key file, creating it (0600, encrypted) and its ``.pub`` on first use;
        a plaintext PEM file of an older bridge is rewritten encrypted (see the module docstring)."""
        path = Path(path)
        if encryptor is None:
            raise KeyFileError(f"audit checkpoint key {path}: signing needs the key-encryption key "
                               f"{KEK_SETTING} (the private key is stored encrypted under it)")
        if not path.exists():
            key = cls.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            data = key._encrypted_file(encryptor)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another worker created it meanwhile: use theirs
                return cls._load_or_create(path, encryptor)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            public_path(path).write_bytes(key._public_pem())
            return key
        data = _read(path)
        if b"PRIVATE KEY" in data:
            key = _from_plaintext_pem(path, data)
            _replace(path, key._encrypted_file(encryptor))
            if not public_path(path).exists():
                public_path(path).write_bytes(key._public_pem())
            log.warning("audit checkpoint key %s: was an unencrypted PEM file; rewritten encrypted under %s",
                        path, KEK_SETTING)
            return key
        public, blob = _parse_encrypted(path, data)
        label = f"audit-checkpoint:{CheckpointKey(public).kid}"
        try:
            raw = encryptor.decrypt(blob, label, what="audit checkpoint key")
        except KeyEncryptionError:
            raise KeyFileError(f"audit checkpoint key {path}: cannot decrypt (wrong {KEK_SETTING}, "
                               "or the file was altered)") from None
        try:
            priv = Ed25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            raise KeyFileError(f"audit checkpoint key {path}: the decrypted private key is not Ed25519") from None
        if priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != \
                public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw):
            raise KeyFileError(f"audit checkpoint key {path}: the private key does not match its public key")
        return cls(public, priv)

    @classmethod
    def load_public(cls, path: Path) -> CheckpointKey:
        """Load for verification only (no KEK needed): a ``.pub`` PEM, or the key file (its public
        part), with the retired public keys beside it."""
        path = Path(path)
        key_file = Path(str(path)[: -len(".pub")]) if str(path).endswith(".pub") else path
        return cls._load_public(path).with_retired(key_file)

    @classmethod
    def _load_public(cls, path: Path) -> CheckpointKey:
        data = _read(path)
        if b"PRIVATE KEY" in data:
            return cls(_from_plaintext_pem(path, data).public)
        if data.lstrip().startswith(b"{"):
            return cls(_parse_encrypted(path, data)[0])
        try:
            pub = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"audit checkpoint key {path}: cannot load ({exc})") from None
        if not isinstance(pub, Ed25519PublicKey):
            raise KeyFileError(f"audit checkpoint key {path}: not an Ed25519 public key")
        return cls(pub)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"audit checkpoint key {path}: cannot read ({exc.strerror})") from None


def _from_plaintext_pem(path: Path, data: bytes) -> CheckpointKey:
    """An unencrypted PKCS#8 PEM private key (the format before encryption at rest)."""
    try:
        priv = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError) as exc:
        raise KeyFileError(f"audit checkpoint key {path}: cannot load ({exc})") from None
    if not isinstance(priv, Ed25519PrivateKey):
        raise KeyFileError(f"audit checkpoint key {path}: not an Ed25519 private key")
    return CheckpointKey(priv.public_key(), priv)


def _parse_encrypted(path: Path, data: bytes) -> tuple[Ed25519PublicKey, bytes]:
    """The public key and the private key's ciphertext of an encrypted key file."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FILE_FORMAT or doc.get("alg") != ALG:
            raise ValueError(f"format {doc.get('format')!r}, alg {doc.get('alg')!r}")
        public = Ed25519PublicKey.from_public_bytes(_unb64(doc["public_key"]))
        blob = _unb64(doc["private_key_encrypted"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise KeyFileError(f"audit checkpoint key {path}: not an audit checkpoint key file "
                           f"(expected {FILE_FORMAT} or a PEM key; {exc})") from None
    return public, blob


def _replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (0600), so a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def public_path(private_path: Path) -> Path:
    return Path(str(private_path) + ".pub")


def retired_path(private_path: Path) -> Path:
    """Where the public keys of earlier checkpoint keys are kept (PEM blocks, plaintext on purpose)."""
    return Path(str(private_path) + ".retired.pub")
