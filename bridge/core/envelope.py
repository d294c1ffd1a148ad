"""Envelope encryption of stored objects: the on-disk format of the encrypted image store.

Why envelope encryption: every file gets its own random AES-256 data key; only that 32-byte key
is wrapped by the key-encryption key (KEK).  Rotating the KEK then rewrites a small header per
file (:func:`rewrap`), never the body, and a KEK held by an HSM or a KMS only ever sees data keys
(:class:`KeyProvider` is the whole interface a key service must offer).

Stdlib + ``cryptography`` only: it runs inside Orthanc under Debian's ``/usr/bin/python3``
(python3-cryptography 38) as well as in the bridge's virtualenv.

Format, version 1 (all integers big-endian)::

    magic        4  b"\\x89PBE"   (not ASCII, so never a DICOM preamble, JSON or zlib start)
    version      1  1
    content type 2  Orthanc's attachment type (1 DICOM, 2 DICOM as JSON, 3 DICOM until pixel data)
    key id len   1  then the KEK's id (ASCII, 1..64 bytes): which KEK wrapped the data key
    wrapped len  2  then the wrapped data key (opaque: what the KeyProvider returned)
    body nonce  12
    body            AES-256-GCM(data key, body nonce, plaintext, AD) = ciphertext || 16-byte tag

The associated data (AD) of both the wrapping and the body is :func:`context`: format name,
attachment uuid and content type.  So a file copied or renamed onto another attachment's path, or
read as another content type, fails to open (the uuid comes from the path, never from the file),
and a damaged, truncated or extended file fails its tag: a read error, never other bytes.
The content type is also in the header in clear, so tools outside Orthanc (rotation, migration)
can rebuild the AD from the file name and the header alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"\x89PBE"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MAX_KEY_ID = 64
MAX_WRAPPED = 4096
#: GCM's limit for one key and nonce: 2**39 - 256 bits of plaintext
MAX_BODY = 2**36 - 32
_FIXED = len(MAGIC) + 1 + 2 + 1  # magic, version, content type, key id length
KEY_FILE_FORMAT = "pacs-bridge-storage-kek"


class EnvelopeError(Exception):
    """A file that cannot be opened or written.  ``reason`` is a short stable word for the audit
    trail (``damaged``, ``truncated``, ``unknown-key``, ``unsupported-version``, ``not-encrypted``,
    ``too-large``, ``bad-key-file``); the message never holds key material or file content."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class KeyProvider(Protocol):
    """Wraps and unwraps data keys under KEKs it holds; a file KEK today, an HSM/KMS tomorrow.

    ``context`` is the associated data the wrapping must be bound to.  ``wrap`` uses the current
    KEK and says which one; ``unwrap`` must accept every KEK id still in use (old ones stay
    readable until a rotation has re-wrapped every file)."""

    def current_key_id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes: ...


@dataclass(frozen=True)
class Header:
    """A parsed header; ``length`` is its size in bytes (the body starts there)."""

    content_type: int
    key_id: str
    wrapped: bytes
    body_nonce: bytes
    length: int
    version: int = VERSION

    def encode(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return b"".join((
            MAGIC, bytes([self.version]), self.content_type.to_bytes(2, "big"), bytes([len(kid)]), kid,
            len(self.wrapped).to_bytes(2, "big"), self.wrapped, self.body_nonce,
        ))


def context(uuid: str, content_type: int) -> bytes:
    """The associated data binding a file to its attachment (uuid and content type)."""
    return f"pacs-bridge-storage/{VERSION}\x00{uuid}\x00{int(content_type)}".encode()


def is_envelope(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


def _check_key_id(key_id: str) -> str:
    if not (0 < len(key_id) <= MAX_KEY_ID) or not key_id.isascii() or not key_id.isprintable():
        raise EnvelopeError("bad-key-file", f"key id {key_id!r}: 1..{MAX_KEY_ID} printable ASCII characters")
    return key_id


def _header(content_type: int, key_id: str, wrapped: bytes, body_nonce: bytes) -> Header:
    _check_key_id(key_id)
    if not 0 <= int(content_type) <= 0xFFFF:
        raise EnvelopeError("damaged", f"content type {content_type} out of range")
    if len(wrapped) > MAX_WRAPPED:
        raise EnvelopeError("damaged", "wrapped data key too long")
    length = _FIXED + len(key_id) + 2 + len(wrapped) + NONCE_BYTES
    return Header(int(content_type), key_id, bytes(wrapped), body_nonce, length)


def read_header(stream: BinaryIO) -> tuple[Header | None, bytes]:
    """Read a header from ``stream``: ``(header, b"")``, or ``(None, prefix)`` when the stream does
    not start with :data:`MAGIC` (a plaintext file; ``prefix`` is what was consumed).  A stream
    that starts like an envelope but ends inside its header raises ``truncated``."""
    prefix = stream.read(_FIXED)
    if not is_envelope(prefix):
        return None, prefix

    def exactly(n: int) -> bytes:
        chunk = stream.read(n)
        if len(chunk) != n:
            raise EnvelopeError("truncated", "the file ends inside its encryption header")
        return chunk

    if len(prefix) != _FIXED:
        raise EnvelopeError("truncated", "the file ends inside its encryption header")
    version = prefix[4]
    if version != VERSION:
        raise EnvelopeError("unsupported-version", f"encryption format version {version} (this code reads {VERSION})")
    content_type = int.from_bytes(prefix[5:7], "big")
    kid_len = prefix[7]
    try:
        key_id = exactly(kid_len).decode("ascii")
        _check_key_id(key_id)
    except (UnicodeDecodeError, EnvelopeError):
        raise EnvelopeError("damaged", "the encryption header's key id is not valid") from None
    wrapped_len = int.from_bytes(exactly(2), "big")
    if wrapped_len > MAX_WRAPPED:
        raise EnvelopeError("damaged", "the encryption header's wrapped key is too long")
    wrapped = exactly(wrapped_len)
    nonce = exactly(NONCE_BYTES)
    return _header(content_type, key_id, wrapped, nonce), b""


def parse_header(data: bytes) -> Header:
    """The header at the start of ``data`` (which must be an envelope)."""
    import io

    header, _ = read_header(io.BytesIO(data))
    if header is None:
        raise EnvelopeError("not-encrypted", "not an encrypted file (no header)")
    return header


def seal(keys: KeyProvider, uuid: str, content_type: int, plaintext: bytes,
         out: bytearray | None = None) -> tuple[bytes, memoryview, bytes]:
    """Encrypt ``plaintext`` under a fresh data key: ``(header, ciphertext, tag)``, written one after
    the other (pieces, so a large body is never copied to prepend the header).  ``out``: a buffer of
    at least ``len(plaintext) + 15`` bytes to encrypt into (the ciphertext is a view of it)."""
    if len(plaintext) > MAX_BODY:
        raise EnvelopeError("too-large", f"attachment of {len(plaintext)} bytes: at most {MAX_BODY} can be encrypted")
    aad = context(uuid, content_type)
    data_key = AESGCM.generate_key(bit_length=256)
    key_id, wrapped = keys.wrap(data_key, aad)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext, tag = _gcm_encrypt(data_key, nonce, plaintext, aad, out)
    return _header(content_type, key_id, wrapped, nonce).encode(), ciphertext, tag


# Why not AESGCM.encrypt/decrypt for the bodies: in Debian's cryptography 38 they zero a new buffer
# and copy the result out of it (and the caller's input, to split off the tag): 5 ms per 2 MB
# where the cipher itself needs 0.6 ms.  The streaming context writes into one buffer we own; the
# result is the same AES-256-GCM (ciphertext || 16-byte tag), so either API opens either's files.


def _room(out: bytearray | None, size: int) -> bytearray:
    """``out`` if it holds ``size`` bytes plus the block update_into wants spare, else a new buffer."""
    return out if out is not None and len(out) >= size + 15 else bytearray(size + 15)


def _gcm_encrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes,
                 out: bytearray | None = None) -> tuple[memoryview, bytes]:
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    out = _room(out, len(data))
    n = enc.update_into(data, out)
    enc.finalize()
    return memoryview(out)[:n], enc.tag


def _gcm_decrypt(key: bytes, nonce: bytes, body: bytes | memoryview, aad: bytes,
                 out: bytearray | None = None) -> bytes:
    """The plaintext, returned only once the tag has verified (nothing of an unverified body escapes)."""
    view = memoryview(body)
    dec = Cipher(algorithms.AES(key), modes.GCM(nonce, bytes(view[-TAG_BYTES:]))).decryptor()
    dec.authenticate_additional_data(aad)
    out = _room(out, len(view) - TAG_BYTES)
    n = dec.update_into(view[:-TAG_BYTES], out)
    dec.finalize()  # InvalidTag unless every byte is as written for this attachment
    return bytes(memoryview(out)[:n])  # Orthanc's API wants bytes: the one copy


def unwrap_key(keys: KeyProvider, header: Header, uuid: str, content_type: int) -> bytes:
    aad = context(uuid, content_type)
    if header.content_type != int(content_type):
        raise EnvelopeError("damaged", f"the file holds content type {header.content_type}, not {content_type}")
    data_key = keys.unwrap(header.key_id, header.wrapped, aad)
    if len(data_key) != KEY_BYTES:
        raise EnvelopeError("damaged", "the data key has the wrong size")
    return data_key


def open_body(keys: KeyProvider, header: Header, uuid: str, content_type: int, body: bytes | memoryview,
              out: bytearray | None = None) -> bytes:
    """The plaintext of ``body`` (raises ``damaged`` unless every byte is as written for this
    attachment).  ``out``: a scratch buffer to decrypt into (another buffer than ``body``'s)."""
    data_key = unwrap_key(keys, header, uuid, content_type)
    if len(body) < TAG_BYTES:
        raise EnvelopeError("truncated", "the encrypted body is shorter than its tag")
    try:
        return _gcm_decrypt(data_key, header.body_nonce, body, context(uuid, content_type), out)
    except InvalidTag:
        raise EnvelopeError("damaged", "the encrypted body failed authentication (altered, truncated "
                                       "or another attachment's file)") from None


def rewrap(old: KeyProvider, new: KeyProvider, header: Header, uuid: str) -> Header:
    """The same data key wrapped under ``new``'s current KEK (the body is untouched)."""
    data_key = unwrap_key(old, header, uuid, header.content_type)
    key_id, wrapped = new.wrap(data_key, context(uuid, header.content_type))
    return _header(header.content_type, key_id, wrapped, header.body_nonce)


# ------------------------------------------------------------------ local KEKs


class LocalKeyRing:
    """KEKs held in memory (AES-256-GCM key wrap, the KEK id in the associated data)."""

    def __init__(self, keys: Mapping[str, bytes], current: str):
        if current not in keys:
            raise EnvelopeError("bad-key-file", f"current key {current!r} is not among the keys")
        for kid, key in keys.items():
            _check_key_id(kid)
            if len(key) != KEY_BYTES:
                raise EnvelopeError("bad-key-file", f"key {kid!r}: must be {KEY_BYTES} bytes")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self._raw = dict(keys)
        self.current = current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._raw)

    def current_key_id(self) -> str:
        return self.current

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current
        return kid, nonce + self._aead[kid].encrypt(nonce, data_key, context + b"\x00kek:" + kid.encode())

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        aead = self._aead.get(key_id)
        if aead is None:
            raise EnvelopeError("unknown-key", f"the file's data key is wrapped by key {key_id!r}, which is not "
                                               "in the storage key file")
        try:
            return aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context + b"\x00kek:" + key_id.encode())
        except Exception:
            raise EnvelopeError("damaged", "the data key does not unwrap for this attachment (a file of "
                                           "another attachment, or altered)") from None

    def with_new_key(self, key_id: str | None = None) -> LocalKeyRing:
        """A ring with a fresh KEK added and made current (the old ones stay, readable)."""
        kid = key_id or new_key_id()
        return LocalKeyRing({**self._raw, kid: AESGCM.generate_key(bit_length=256)}, kid)

    def only_current(self) -> LocalKeyRing:
        return LocalKeyRing({self.current: self._raw[self.current]}, self.current)

    def to_json(self) -> str:
        return json.dumps({
            "format": KEY_FILE_FORMAT, "version": 1, "current": self.current,
            "keys": {kid: base64.b64encode(key).decode() for kid, key in self._raw.items()},
        }, indent=2) + "\n"


def new_key_id() -> str:
    """``sk-<UTC time>-<random>``: sortable, unique, says nothing about the key."""
    return f"sk-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


def parse_key_file(text: str, source: str) -> LocalKeyRing:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EnvelopeError("bad-key-file", f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT or data.get("version") != 1:
        raise EnvelopeError("bad-key-file", f"{source}: not a storage key file "
                                            f"(format {KEY_FILE_FORMAT!r}, version 1)")
    keys_in, current = data.get("keys"), data.get("current")
    if not isinstance(keys_in, dict) or not keys_in or not isinstance(current, str):
        raise EnvelopeError("bad-key-file", f"{source}: needs 'current' and a non-empty 'keys' object")
    keys: dict[str, bytes] = {}
    for kid, value in keys_in.items():
        try:
            keys[kid] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise EnvelopeError("bad-key-file", f"{source}: key {kid!r} is not valid base64") from None
    try:
        return LocalKeyRing(keys, current)
    except EnvelopeError as exc:
        raise EnvelopeError("bad-key-file", f"{source}: {exc}") from None


def read_key_file(path: str) -> tuple[LocalKeyRing, tuple[float, int, int]]:
    """The ring in ``path`` and the file's (mtime, size, inode).  Refused when other users may read
    it or anyone but its owner may write it: the KEK opens every stored image."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise EnvelopeError("bad-key-file", f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise EnvelopeError("bad-key-file", f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, must be 0600 "
                                                "(or 0400): the storage KEK opens every stored image")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise EnvelopeError("bad-key-file", f"{path}: cannot read ({exc.strerror})") from None
    return parse_key_file(text, path), (st.st_mtime, st.st_size, st.st_ino)


def write_key_file(path: str, ring: LocalKeyRing) -> None:
    """Replace ``path`` atomically (temp file 0600 in the same directory, fsync, rename, fsync the
    directory): a crash leaves the old file or the new one, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, ring.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def create_key_file(path: str) -> LocalKeyRing:
    """A new key file with one fresh KEK (refuses to replace an existing file)."""
    if os.path.exists(path):
        raise EnvelopeError("bad-key-file", f"{path}: exists already (a KEK is never overwritten)")
    ring = LocalKeyRing({(kid := new_key_id()): AESGCM.generate_key(bit_length=256)}, kid)
    write_key_file(path, ring)
    return ring


class FileKeyProvider:
    """The KEKs of a key file, followed while Orthanc runs.

    Why it re-reads: ``pacs-bridge keys rotate-storage`` adds a KEK and re-wraps files while
    Orthanc serves them.  New files must move to the new KEK, a file re-wrapped a moment ago must
    open, and a KEK the finished rotation dropped must stop opening anything: every ``wrap`` and
    ``unwrap`` checks the file's stat (one ``os.stat``, microseconds beside the file I/O), and an
    unknown key id forces one re-read (a rewrite within the stat's time resolution).  A key file
    that becomes unreadable keeps the last good ring (noted in ``errors``), so a rotation mistake
    does not stop the PACS."""

    def __init__(self, path: str):
        self.path = path
        self._ring, self._stamp = read_key_file(path)
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def _refresh(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._note(f"{self.path}: {exc.strerror}; keeping the keys read before")
            return
        if not force and (st.st_mtime, st.st_size, st.st_ino) == self._stamp:
            return
        with self._lock:
            try:
                self._ring, self._stamp = read_key_file(self.path)
            except EnvelopeError as exc:
                self._note(f"{exc}; keeping the keys read before")

    def _note(self, message: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(message)

    @property
    def ring(self) -> LocalKeyRing:
        return self._ring

    def current_key_id(self) -> str:
        self._refresh()
        return self._ring.current

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        self._refresh()
        return self._ring.wrap(data_key, context)

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        self._refresh()  # a KEK dropped by a finished rotation stops working at once
        ring = self._ring
        if key_id not in ring.key_ids:
            self._refresh(force=True)
            ring = self._ring
        return ring.unwrap(key_id, wrapped, context)
