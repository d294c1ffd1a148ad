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

    def fingerprint(self) -> str:
        """A short public name of this key (not reversible): ``k`` + 15 hex digits of a hash."""
        import hashlib

        return "k" + hashlib.sha256(b"pacs-bridge key id\x00" + self._kek).hexdigest()[:15]

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


#: the HKDF purpose of the key wrapping the data keys of the bridge's sealed audit files
AUDIT_FILES_PURPOSE = "pacs-bridge audit files v1"


def audit_file_keys(settings: object) -> KekKeyProvider | None:
    """The key provider sealing the bridge's audit spool, archives and crash journal: under the KEK
    when one is configured (a bridge that signs has one), else None (files stay plaintext)."""
    if getattr(settings.tokens, "key_encryption_key", None) is None:  # type: ignore[attr-defined]
        return None
    return KekKeyProvider(KeyEncryptor.from_settings(settings), AUDIT_FILES_PURPOSE)


class KekKeyProvider:
    """The envelope format's key provider (:class:`bridge.core.envelope.KeyProvider`) over a key
    derived from the bridge's KEK for ``purpose``: data keys of the bridge's sealed files (audit
    spools, archives, the crash journal) are wrapped under it.

    The key id is a fingerprint of the derived key, so a file names the KEK generation that
    wrapped it: during a KEK rotation the previous KEK's files still open, and
    :meth:`KeyEncryptor.rewrapped`'s counterpart for files is :func:`bridge.core.envelope.rewrap`."""

    def __init__(self, encryptor: KeyEncryptor, purpose: str):
        self._current = encryptor.derived(purpose)
        self._by_id = {self._current.fingerprint(): self._current}
        if encryptor.previous is not None:
            old = encryptor.previous.derived(purpose)
            self._by_id.setdefault(old.fingerprint(), old)

    def current_key_id(self) -> str:
        return self._current.fingerprint()

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        return self._current.fingerprint(), self._current.encrypt(data_key, context.hex())

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        from bridge.core.envelope import EnvelopeError

        enc = self._by_id.get(key_id)
        if enc is None:
            raise EnvelopeError("unknown-key", f"wrapped under key {key_id}, which this bridge's "
                                f"{KEK_SETTING} (or its previous one) is not")
        try:
            return enc.decrypt(wrapped, context.hex(), what="data key")
        except KeyEncryptionError:
            raise EnvelopeError("damaged", "the data key does not unwrap for this file") from None
