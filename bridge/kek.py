"""The bridge's key-encryption key (KEK): the top of the bridge host's key hierarchy.

Why one module: every secret key the bridge keeps at rest (the token signing keys in the
database, the audit checkpoint signing key on disk) is wrapped by this one KEK
(``tokens.key_encryption_key`` / ``_file``), so there is one thing to protect, back up and
rotate.  ``bridge.tokens`` and ``bridge.audit`` both import it from here (neither may import the
other's internals both ways: the top-level parts of ``bridge`` form no import cycle).  The
hierarchy itself is described in docs/encryption.md.

AES-256-GCM, a fresh 96-bit nonce per encryption, and an *associated data* label naming what
the ciphertext is for (a token key's ``kid``, ``audit-checkpoint:<kid>``) so a ciphertext cannot
be moved onto another row or file and still decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.errors import InputError

#: the configuration key holding the KEK (named in every error)
KEK_SETTING = "tokens.key_encryption_key"
#: the KEK being rotated away from (opens, never wraps)
PREVIOUS_SETTING = "tokens.previous_key_encryption_key"
_FORMAT_V1 = b"\x01"


class KeyEncryptionError(InputError):
    """A KEK problem an operator must fix: not set, malformed, or it does not open a ciphertext."""

    area = "keys"


class KeyEncryptor:
    """AES-256-GCM with the key-encryption key; ``label`` (e.g. a ``kid``) is the associated data."""

    def __init__(self, kek: bytes, previous: KeyEncryptor | None = None):
        if len(kek) != 32:
            raise KeyEncryptionError(f"{KEK_SETTING}: must be 32 bytes (base64-encoded)")
        self._aead = AESGCM(kek)
        self._kek = kek
        #: the KEK being rotated away from (``tokens.previous_key_encryption_key``): it still
        #: opens what it wrapped, never wraps anything new (docs/encryption.md, KEK rotation)
        self.previous = previous

    def derived(self, purpose: str) -> KeyEncryptor:
        """An encryptor under a key derived from the KEK for ``purpose`` (HKDF-SHA256, the purpose
        as ``info``): another kind of secret (e.g. gateway sessions) never shares the signing keys'
        AES key, so a ciphertext of one kind cannot be decrypted as the other."""
        previous = self.previous.derived(purpose) if self.previous is not None else None
        return KeyEncryptor(self.derived_key(purpose), previous)

    def derived_key(self, purpose: str) -> bytes:
        """The raw 32-byte key derived for ``purpose`` (HKDF-SHA256), for a cipher that takes a
        key rather than an encryptor (SQLCipher's database key)."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"pacs-bridge key hierarchy",
                    info=purpose.encode()).derive(self._kek)

    @classmethod
    def from_secret(cls, value: str | None) -> KeyEncryptor:
        """Parse the configured key-encryption key: base64 (standard or URL-safe) of 32 random bytes."""
        if not value:
            raise KeyEncryptionError(
                f"{KEK_SETTING}: not set; generate one with "
                "`python3 -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(32)).decode())'` "
                f"and give it as {KEK_SETTING}_file"
            )
        text = value.strip()
        try:
            raw = base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise KeyEncryptionError(f"{KEK_SETTING}: not valid base64") from None
        return cls(raw)

    @classmethod
    def from_settings(cls, settings: object) -> KeyEncryptor:
        """The KEK of a loaded configuration (``tokens.key_encryption_key``), with the previous
        one (``tokens.previous_key_encryption_key``) during a rotation."""
        tokens = settings.tokens  # type: ignore[attr-defined]
        kek = tokens.key_encryption_key
        current = cls.from_secret(kek.get_secret_value() if kek else None)
        old = getattr(tokens, "previous_key_encryption_key", None)
        if old is not None and old.get_secret_value():
            try:
                current.previous = cls.from_secret(old.get_secret_value())
            except KeyEncryptionError as exc:
                raise KeyEncryptionError(str(exc).replace(KEK_SETTING, PREVIOUS_SETTING)) from None
            if current.previous._kek == current._kek:
                raise KeyEncryptionError(f"{PREVIOUS_SETTING}: the same key as {KEK_SETTING}")
        return current

    @staticmethod
    def generate_secret() -> str:
        return base64.urlsafe_b64encode(os.urandom(32)).decode()

    def encrypt(self, plaintext: bytes, label: str) -> bytes:
        nonce = os.urandom(12)
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, label.encode())

    def decrypt(self, blob: bytes, label: str, *, what: str = "signing key") -> bytes:
        """Open a ciphertext of :meth:`encrypt` (under this KEK, else the previous one during a
        rotation); ``what`` names the object in the error."""
        return self._open(blob, label, what)[0]

    def _open(self, blob: bytes, label: str, what: str) -> tuple[bytes, bool]:
        """The plaintext, and whether the previous KEK was needed to open it."""
        if blob[:1] != _FORMAT_V1 or len(blob) < 1 + 12 + 16:
            raise KeyEncryptionError(f"{what} {label}: unknown ciphertext format")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], label.encode()), False
        except Exception:
            if self.previous is not None:
                with contextlib.suppress(Exception):  # neither opens it: the error below
                    return self.previous._aead.decrypt(blob[1:13], blob[13:], label.encode()), True
            raise KeyEncryptionError(
                f"{what} {label}: cannot decrypt (wrong {KEK_SETTING}, or the ciphertext was altered)"
            ) from None

    def rewrapped(self, blob: bytes, label: str, *, what: str = "signing key") -> bytes | None:
        """``blob`` encrypted under this KEK when only the previous one opens it, else None
        (already current).  A ciphertext neither opens is an error naming it."""
        plain, old = self._open(blob, label, what)
        return self.encrypt(plain, label) if old else None
