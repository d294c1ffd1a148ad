"""Envelope encryption of stored objects: the on-disk format of the encrypted image store.

Why envelope encryption: every file gets its own random AES-256 data key; only that 32-byte key
is wrapped by the key-encryption key (KEK).  Rotating the KEK then rewrites a small header per
file (:func:`rewrap`), never the body, and a KEK held by an HSM or a KMS only ever sees data keys
(:class:`KeyProvider` is the whole interface a key service must offer).

Stdlib + ``cryptography`` only: it runs inside Orthanc under Debian's ``/usr/bin/python3``
(python3-cryptography 38) as well as in the bridge's virtualenv.

Header (all integers big-endian)::

    magic        4  b"\\x89PBE"   (not ASCII, so never a DICOM preamble, JSON or zlib start)
    version      1  1 or 2
    content type 2  Orthanc's attachment type (1 DICOM, 2 DICOM as JSON, 3 DICOM until pixel data)
    key id len   1  then the KEK's id (ASCII, 1..64 bytes): which KEK wrapped the data key
    wrapped len  2  then the wrapped data key (opaque: what the KeyProvider returned)
    body nonce  12
    segment size 4  version 2 only: plaintext bytes per body segment (1..MAX_SEGMENT)

Body, version 1 (still read, no longer written): one AES-256-GCM(data key, body nonce, plaintext,
AD) = ciphertext || 16-byte tag.

Body, version 2 (written since issue 12's read target): the plaintext cut into segments of
``segment size`` bytes (the last one shorter, or empty for an empty attachment), each sealed on its
own: ``AES-256-GCM(data key, nonce_i, segment_i, AD_i) = ciphertext_i || tag_i``, one after the
other, where ``nonce_i`` = body nonce XOR i (as 96-bit integers: distinct for every segment under
a key that is the file's alone) and ``AD_i`` = AD || ``\\x00seg\\x00`` || segment size (4 bytes) ||
i (8 bytes) || 1 if it is the last segment else 0.  Why segments: they can be decrypted on several
cores at once (:mod:`bridge.core.crypto_workers`, opt-in: it did not pay on the machine measured)
and, with a storage API that reads ranges (later orthanc-python releases), a part of a file can be
opened without decrypting the rest.  The index and the last-segment flag in each segment's AD mean that
segments cannot be reordered, duplicated, dropped or cut off at a segment boundary (the new last
segment was sealed as not last), nor appended to: every such file fails a tag.

The associated data (AD) of the wrapping and of the body is :func:`context`: format name,
attachment uuid and content type.  So a file copied or renamed onto another attachment's path, or
read as another content type, fails to open (the uuid comes from the path, never from the file),
and a damaged, truncated or extended file fails its tag: a read error, never other bytes.
The content type is also in the header in clear, so tools outside Orthanc (rotation, migration)
can rebuild the AD from the file name and the header alone.  The wrapping's AD does not name the
format version, so :func:`rewrap` serves both versions (it keeps the header's version and segment
size and never touches the body).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import mmap
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge.core import crypto_workers

MAGIC = b"\x89PBE"
#: the version :func:`seal` writes; :data:`VERSIONS` are read
VERSION = 2
VERSIONS = (1, 2)
#: the version in :func:`context`'s text (version 1's; it stays, so version 1 files keep opening)
CONTEXT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MAX_KEY_ID = 64
MAX_WRAPPED = 4096
#: GCM's limit for one key and nonce: 2**39 - 256 bits of plaintext
MAX_BODY = 2**36 - 32
_FIXED = len(MAGIC) + 1 + 2 + 1  # magic, version, content type, key id length
KEY_FILE_FORMAT = "pacs-bridge-storage-kek"
#: version 2 segments: a body up to SINGLE_SEGMENT bytes is one segment; a larger one is cut into
#: segments of about SEGMENT_TARGET (at least two).  Why 1 MiB: every segment costs a cipher
#: initialisation, its Python and a tag (~7 µs, 16 bytes), and splitting a 0.5 MB image in two only
#: pays when another core decrypts half of it, which did not pay on the machine measured (see
#: bridge/core/crypto_workers.py); 1 MiB segments keep that cost below 1 % of the decryption.
SINGLE_SEGMENT = 1 << 20
SEGMENT_TARGET = 1 << 20
#: the largest segment size a reader accepts (the header's field is 4 bytes)
MAX_SEGMENT = 64 << 20
#: bodies from this size go to the helper threads, when there are any (below it the hand-over
#: costs more than it saves: measured at 0.5 MB)
PARALLEL_MIN = 1 << 20


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
    """A parsed header; ``length`` is its size in bytes (the body starts there).
    ``segment_size`` is 0 for version 1 (one GCM body)."""

    content_type: int
    key_id: str
    wrapped: bytes
    body_nonce: bytes
    length: int
    version: int = VERSION
    segment_size: int = 0

    def encode(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return b"".join((
            MAGIC, bytes([self.version]), self.content_type.to_bytes(2, "big"), bytes([len(kid)]), kid,
            len(self.wrapped).to_bytes(2, "big"), self.wrapped, self.body_nonce,
            self.segment_size.to_bytes(4, "big") if self.version >= 2 else b"",
        ))


def context(uuid: str, content_type: int) -> bytes:
    """The associated data binding a file to its attachment (uuid and content type)."""
    return f"pacs-bridge-storage/{CONTEXT_VERSION}\x00{uuid}\x00{int(content_type)}".encode()


def is_envelope(prefix: bytes | memoryview) -> bool:
    return bytes(prefix[: len(MAGIC)]) == MAGIC


def _check_key_id(key_id: str) -> str:
    if not (0 < len(key_id) <= MAX_KEY_ID) or not key_id.isascii() or not key_id.isprintable():
        raise EnvelopeError("bad-key-file", f"key id {key_id!r}: 1..{MAX_KEY_ID} printable ASCII characters")
    return key_id


def _header(content_type: int, key_id: str, wrapped: bytes, body_nonce: bytes, version: int = VERSION,
            segment_size: int = 0) -> Header:
    _check_key_id(key_id)
    if not 0 <= int(content_type) <= 0xFFFF:
        raise EnvelopeError("damaged", f"content type {content_type} out of range")
    if len(wrapped) > MAX_WRAPPED:
        raise EnvelopeError("damaged", "wrapped data key too long")
    if version >= 2 and not 0 < segment_size <= MAX_SEGMENT:
        raise EnvelopeError("damaged", f"segment size {segment_size} out of range")
    length = _FIXED + len(key_id) + 2 + len(wrapped) + NONCE_BYTES + (4 if version >= 2 else 0)
    return Header(int(content_type), key_id, bytes(wrapped), bytes(body_nonce), length, version,
                  segment_size if version >= 2 else 0)


def _decode_header(prefix: bytes, take: Callable[[int], bytes]) -> Header:
    """The header after its fixed part ``prefix`` (magic checked), the rest read by ``take(n)``,
    which returns at most ``n`` bytes."""

    def exactly(n: int) -> bytes:
        chunk = take(n)
        if len(chunk) != n:
            raise EnvelopeError("truncated", "the file ends inside its encryption header")
        return chunk

    if len(prefix) != _FIXED:
        raise EnvelopeError("truncated", "the file ends inside its encryption header")
    version = prefix[4]
    if version not in VERSIONS:
        raise EnvelopeError("unsupported-version", f"encryption format version {version} (this code reads "
                                                   f"{', '.join(map(str, VERSIONS))})")
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
    segment_size = int.from_bytes(exactly(4), "big") if version >= 2 else 0
    return _header(content_type, key_id, wrapped, nonce, version, segment_size)


def read_header(stream: BinaryIO) -> tuple[Header | None, bytes]:
    """Read a header from ``stream``: ``(header, b"")``, or ``(None, prefix)`` when the stream does
    not start with :data:`MAGIC` (a plaintext file; ``prefix`` is what was consumed).  A stream
    that starts like an envelope but ends inside its header raises ``truncated``."""
    prefix = stream.read(_FIXED)
    if not is_envelope(prefix):
        return None, prefix
    return _decode_header(prefix, stream.read), b""


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """The header at the start of ``data`` (which must be an envelope); ``data`` is not copied."""
    view = memoryview(data)
    if not is_envelope(view):
        raise EnvelopeError("not-encrypted", "not an encrypted file (no header)")
    head = bytes(view[:_FIXED + MAX_KEY_ID + 2 + MAX_WRAPPED + NONCE_BYTES + 4])  # at most the largest header
    at = _FIXED

    def take(n: int) -> bytes:
        nonlocal at
        chunk = head[at:at + n]
        at += len(chunk)
        return chunk

    return _decode_header(head[:_FIXED], take)


# ------------------------------------------------------------------ bodies
#
# Why not AESGCM.encrypt/decrypt for the bodies: in Debian's cryptography 38 they zero a new buffer
# and copy the result out of it (and the caller's input, to split off the tag): 5 ms per 2 MB
# where the cipher itself needs 0.6 ms.  Both ways below write into a buffer we own; the result is
# the same AES-256-GCM (ciphertext || 16-byte tag), so any implementation opens the segments.


def segment_size_for(size: int) -> int:
    """The segment size :func:`seal` uses for a plaintext of ``size`` bytes (see the module doc)."""
    if size <= SINGLE_SEGMENT:
        return SINGLE_SEGMENT
    count = max(2, round(size / SEGMENT_TARGET))
    per = -(-size // count)
    return min(MAX_SEGMENT, -(-per // 4096) * 4096)  # whole pages: the threads write apart


def _segments(plain_size: int, segment_size: int) -> int:
    return max(1, -(-plain_size // segment_size))


def sealed_size(size: int) -> int:
    """The body size of a ``size``-byte plaintext as :func:`seal` writes it (a tag per segment)."""
    return size + TAG_BYTES * _segments(size, segment_size_for(size))


def _nonce(body_nonce: bytes, index: int) -> bytes:
    return (int.from_bytes(body_nonce, "big") ^ index).to_bytes(NONCE_BYTES, "big")


def _segment_aad(aad: bytes, segment_size: int, index: int, last: bool) -> bytes:
    return b"".join((aad, b"\x00seg\x00", segment_size.to_bytes(4, "big"), index.to_bytes(8, "big"),
                     b"\x01" if last else b"\x00"))


def _update_into(ctx: object, data: memoryview, out: memoryview) -> None:
    """``ctx.update_into(data, out)``, checked to have written exactly ``len(data)`` bytes at the
    start of ``out``.

    cryptography wants 15 spare bytes after the output (a block cipher may emit a block more); GCM
    emits exactly what it is given (checked: any other count is an error).  Where ``out`` has no
    room to spare, the last 16 bytes go through ``update`` (a small copy)."""
    n = len(data)
    if len(out) >= n + 15:
        done = ctx.update_into(data, out)  # type: ignore[attr-defined]
    else:
        cut = max(0, n - 16)
        done = ctx.update_into(data[:cut], out[:n]) if cut else 0  # type: ignore[attr-defined]
        tail = ctx.update(data[cut:n])  # type: ignore[attr-defined]
        out[cut:cut + len(tail)] = tail
        done += len(tail)
    if done != n:
        raise EnvelopeError("damaged", f"the cipher returned {done} bytes for {n}")


class _PublicGCM:
    """AES-256-GCM through cryptography's public streaming API (any cryptography version)."""

    name = "cryptography"

    @staticmethod
    def seal_into(key: bytes, nonce: bytes, aad: bytes, src: memoryview, dst: memoryview) -> None:
        """``dst`` (``len(src) + 16`` bytes) = ciphertext || tag."""
        n = len(src)
        enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        _update_into(enc, src, dst)  # the tag's 16 bytes are the spare room cryptography wants
        enc.finalize()
        dst[n:n + TAG_BYTES] = enc.tag

    @staticmethod
    def open_into(key: bytes, nonce: bytes, aad: bytes, src: memoryview, dst: memoryview) -> None:
        """``dst`` (``len(src) - 16`` bytes) = the plaintext of ``src`` (ciphertext || tag); raises
        InvalidTag (``dst`` then holds unverified bytes: the caller throws it away)."""
        n = len(src) - TAG_BYTES
        dec = Cipher(algorithms.AES(key), modes.GCM(nonce, bytes(src[n:]))).decryptor()
        dec.authenticate_additional_data(aad)
        _update_into(dec, src[:n], dst)
        dec.finalize()


class _OpenSSLGCM:
    """AES-256-GCM straight through the OpenSSL bindings of Debian bookworm's python3-cryptography
    38 (``cryptography.hazmat.bindings._openssl``), the package the plugin runs with.

    Why: the public API costs ~25 µs of Python per cipher context (several objects, a dozen checks,
    an implicit cipher fetch in OpenSSL 3 at every init), a tenth of what a 0.5 MB read may add over
    Orthanc's own storage, and Orthanc's embedded ``libpython`` runs it slower still.  Here: the
    cipher fetched once, one context per thread re-initialised with each segment's key and nonce,
    six OpenSSL calls per segment.  Same OpenSSL, same AES-256-GCM: the unit cases check it against
    the public API both ways.  Later cryptography releases have no such bindings (the bridge's own
    virtualenv): :class:`_PublicGCM` is used there."""

    name = "openssl-bindings"

    def __init__(self) -> None:
        from cryptography.hazmat.bindings._openssl import ffi, lib  # type: ignore[import-not-found]

        self.ffi, self.lib = ffi, lib
        self.cipher = lib.EVP_CIPHER_fetch(ffi.NULL, b"AES-256-GCM", ffi.NULL)  # kept for the process
        if self.cipher == ffi.NULL:
            lib.ERR_clear_error()
            raise RuntimeError("OpenSSL has no AES-256-GCM")
        self._local = threading.local()

    def _ctx(self) -> tuple[object, object, object]:
        local = self._local
        state = getattr(local, "state", None)
        if state is None:
            ffi, lib = self.ffi, self.lib
            ctx = ffi.gc(lib.EVP_CIPHER_CTX_new(), lib.EVP_CIPHER_CTX_free)
            if ctx == ffi.NULL:
                raise MemoryError("EVP_CIPHER_CTX_new")
            state = local.state = (ctx, ffi.new("int *"), ffi.new("unsigned char[]", 32))
        return state

    def _fail(self, what: str) -> EnvelopeError:
        self.lib.ERR_clear_error()  # leave nothing on OpenSSL's error queue for cryptography's next check
        return EnvelopeError("damaged", f"OpenSSL refused the cipher operation ({what})")

    def _start(self, ctx: object, outlen: object, key: bytes, nonce: bytes, aad: bytes, enc: int) -> None:
        ffi, lib = self.ffi, self.lib
        if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
            raise EnvelopeError("damaged", "wrong key or nonce size")
        if not lib.EVP_CipherInit_ex(ctx, self.cipher, ffi.NULL, ffi.from_buffer(key), ffi.from_buffer(nonce), enc):
            raise self._fail("init")
        if aad and not lib.EVP_CipherUpdate(ctx, ffi.NULL, outlen, ffi.from_buffer(aad), len(aad)):
            raise self._fail("associated data")

    def _update(self, ctx: object, outlen: object, src: memoryview, dst: memoryview) -> None:
        n = len(src)
        if len(dst) < n:
            raise EnvelopeError("damaged", "output buffer too small")
        if n:
            ffi = self.ffi
            if not self.lib.EVP_CipherUpdate(ctx, ffi.from_buffer(dst, require_writable=True), outlen,
                                             ffi.from_buffer(src), n):
                raise self._fail("update")
            if outlen[0] != n:  # type: ignore[index]
                raise self._fail(f"{outlen[0]} bytes for {n}")  # type: ignore[index]

    def seal_into(self, key: bytes, nonce: bytes, aad: bytes, src: memoryview, dst: memoryview) -> None:
        ctx, outlen, scratch = self._ctx()
        lib, n = self.lib, len(src)
        self._start(ctx, outlen, key, nonce, aad, 1)
        self._update(ctx, outlen, src, dst[:n])
        if not lib.EVP_CipherFinal_ex(ctx, scratch, outlen):
            raise self._fail("final")
        if not lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, scratch):
            raise self._fail("tag")
        dst[n:n + TAG_BYTES] = self.ffi.buffer(scratch, TAG_BYTES)

    def open_into(self, key: bytes, nonce: bytes, aad: bytes, src: memoryview, dst: memoryview) -> None:
        ctx, outlen, scratch = self._ctx()
        lib, n = self.lib, len(src) - TAG_BYTES
        self._start(ctx, outlen, key, nonce, aad, 0)
        self._update(ctx, outlen, src[:n], dst)
        tag = bytes(src[n:])
        if not lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, self.ffi.from_buffer(tag)):
            raise self._fail("tag")
        if not lib.EVP_CipherFinal_ex(ctx, scratch, outlen):
            lib.ERR_clear_error()
            raise InvalidTag()


def _gcm_implementation() -> _OpenSSLGCM | _PublicGCM:
    """The bindings where they exist and agree with the public API on a test vector, else the public API."""
    try:
        fast = _OpenSSLGCM()
        key, nonce, aad, data = bytes(range(32)), bytes(12), b"ad", bytes(range(200))
        a, b = bytearray(216), bytearray(216)
        fast.seal_into(key, nonce, aad, memoryview(data), memoryview(a))
        _PublicGCM.seal_into(key, nonce, aad, memoryview(data), memoryview(b))
        back = bytearray(200)
        fast.open_into(key, nonce, aad, memoryview(bytes(b)), memoryview(back))
        if a != b or back != data:
            return _PublicGCM()
        return fast
    except Exception:
        return _PublicGCM()


GCM: _OpenSSLGCM | _PublicGCM = _gcm_implementation()


def seal(keys: KeyProvider, uuid: str, content_type: int, plaintext: bytes | memoryview,
         out: bytearray | mmap.mmap | None = None, *,
         helpers: crypto_workers.Helpers | None = None) -> tuple[bytes, memoryview]:
    """Encrypt ``plaintext`` under a fresh data key (format :data:`VERSION`): ``(header, body)``, to be
    written one after the other (pieces, so a large body is never copied to prepend the header).
    ``out``: a buffer of at least :func:`sealed_size` bytes to encrypt into (``body`` is a view of it)."""
    size = len(plaintext)
    if size > MAX_BODY:
        raise EnvelopeError("too-large", f"attachment of {size} bytes: at most {MAX_BODY} can be encrypted")
    aad = context(uuid, content_type)
    data_key = AESGCM.generate_key(bit_length=256)
    key_id, wrapped = keys.wrap(data_key, aad)
    nonce = os.urandom(NONCE_BYTES)
    seg = segment_size_for(size)
    count = _segments(size, seg)
    total = size + TAG_BYTES * count
    if out is None or len(out) < total:
        out = bytearray(total)
    body = memoryview(out)[:total]
    src = memoryview(plaintext)
    gcm = GCM

    def segment(i: int) -> None:
        start = i * seg
        n = min(seg, size - start)
        at = start + i * TAG_BYTES
        gcm.seal_into(data_key, _nonce(nonce, i), _segment_aad(aad, seg, i, i == count - 1),
                      src[start:start + n], body[at:at + n + TAG_BYTES])

    _run(count, size, segment, helpers)
    return _header(content_type, key_id, wrapped, nonce, VERSION, seg).encode(), body


def _run(count: int, size: int, segment: Callable[[int], None], helpers: crypto_workers.Helpers | None) -> None:
    """``segment(i)`` for every segment, on the helper threads too when the body is large enough."""
    if count == 1 or size < PARALLEL_MIN:
        for i in range(count):
            segment(i)
    else:
        (helpers or crypto_workers.HELPERS).run([lambda i=i: segment(i) for i in range(count)])


# ------------------------------------------------------------------ the plaintext: a new bytes object


def _bytes_allocator() -> Callable[[int], tuple[bytes, memoryview]] | None:
    """``PyBytes_FromStringAndSize(NULL, n)`` and a writable view of the new object's storage.

    Why: orthanc-python 4.0's read callback must return ``bytes``, and ``bytes(buffer)`` copies the
    whole plaintext once more (60 µs per 2 MB, measured).  Decrypting straight into a new ``bytes``
    object saves that copy.  Why it is sound: the object comes from CPython's own constructor for
    exactly this use (its C API fills a bytes object created with NULL before publishing it), with
    one reference, ours; it is written only here, before it is returned, hashed or seen by anyone
    else (bytes objects are never interned, and a new object of two or more bytes is never a shared
    singleton: sizes below :data:`_ALLOCATE_MIN` do not come here); after that nobody writes it.
    The view (``PyMemoryView_FromMemory`` over ``ob_sval``, at ``bytes.__basicsize__ - 1``; not a
    ctypes array, whose type would be created anew for every size) is released before the object
    is returned.  A self-test at import falls back to ``bytes(bytearray)`` if any of this does not
    hold (another interpreter, another layout)."""
    try:
        import ctypes

        api = ctypes.pythonapi
        new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)(
            ("PyBytes_FromStringAndSize", api))
        view_of = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)(
            ("PyMemoryView_FromMemory", api))
        writable = 0x200  # PyBUF_WRITE
        offset = bytes.__basicsize__ - 1

        def allocate(n: int) -> tuple[bytes, memoryview]:
            obj = new(None, n)
            return obj, view_of(id(obj) + offset, n, writable)

        probe, view = allocate(16)
        view[:] = b"pacs-bridge-test"
        view.release()
        if type(probe) is not bytes or probe != b"pacs-bridge-test":
            return None
        return allocate
    except Exception:
        return None


_ALLOCATE = _bytes_allocator()
#: below this the copy costs less than the ctypes call
_ALLOCATE_MIN = 4096


def _new_plaintext(n: int) -> tuple[bytes | bytearray, memoryview]:
    """A buffer of ``n`` bytes to decrypt into and the writable view of it; :func:`_finish` turns
    the buffer into the ``bytes`` returned."""
    if _ALLOCATE is not None and n >= _ALLOCATE_MIN:
        return _ALLOCATE(n)
    buf = bytearray(n)
    return buf, memoryview(buf)


def _finish(buf: bytes | bytearray, view: memoryview) -> bytes:
    view.release()
    return buf if isinstance(buf, bytes) else bytes(buf)


def _open_v1(data_key: bytes, nonce: bytes, body: memoryview, aad: bytes) -> bytes:
    """The plaintext, returned only once the tag has verified (nothing of an unverified body escapes)."""
    buf, view = _new_plaintext(len(body) - TAG_BYTES)
    try:
        GCM.open_into(data_key, nonce, aad, body, view)  # InvalidTag unless every byte is as written
    except BaseException:
        view.release()
        raise
    return _finish(buf, view)


def _open_v2(data_key: bytes, header: Header, body: memoryview, aad: bytes,
             helpers: crypto_workers.Helpers | None) -> bytes:
    seg = header.segment_size
    total = len(body)
    count = max(1, -(-total // (seg + TAG_BYTES)))
    last_len = total - (count - 1) * (seg + TAG_BYTES)
    if last_len < TAG_BYTES:
        raise EnvelopeError("truncated", "the encrypted body ends inside a segment's tag")
    size = total - count * TAG_BYTES
    nonce, gcm = header.body_nonce, GCM
    buf, view = _new_plaintext(size)

    def segment(i: int) -> None:
        at = i * (seg + TAG_BYTES)
        n = seg if i < count - 1 else last_len - TAG_BYTES
        start = i * seg
        # InvalidTag unless this segment is as written, at this place, for this attachment
        gcm.open_into(data_key, _nonce(nonce, i), _segment_aad(aad, seg, i, i == count - 1),
                      body[at:at + n + TAG_BYTES], view[start:start + n])

    try:
        _run(count, size, segment, helpers)
    except BaseException:
        view.release()
        raise
    return _finish(buf, view)


def unwrap_key(keys: KeyProvider, header: Header, uuid: str, content_type: int) -> bytes:
    aad = context(uuid, content_type)
    if header.content_type != int(content_type):
        raise EnvelopeError("damaged", f"the file holds content type {header.content_type}, not {content_type}")
    data_key = keys.unwrap(header.key_id, header.wrapped, aad)
    if len(data_key) != KEY_BYTES:
        raise EnvelopeError("damaged", "the data key has the wrong size")
    return data_key


def open_body(keys: KeyProvider, header: Header, uuid: str, content_type: int, body: bytes | memoryview,
              *, helpers: crypto_workers.Helpers | None = None) -> bytes:
    """The plaintext of ``body``, a new ``bytes`` object (raises ``damaged`` unless every byte is as
    written for this attachment; nothing of it is returned before every tag verified)."""
    data_key = unwrap_key(keys, header, uuid, content_type)
    view = memoryview(body)
    if len(view) < TAG_BYTES:
        raise EnvelopeError("truncated", "the encrypted body is shorter than its tag")
    aad = context(uuid, content_type)
    try:
        if header.version == 1:
            return _open_v1(data_key, header.body_nonce, view, aad)
        return _open_v2(data_key, header, view, aad, helpers)
    except InvalidTag:
        raise EnvelopeError("damaged", "the encrypted body failed authentication (altered, truncated "
                                       "or another attachment's file)") from None


def rewrap(old: KeyProvider, new: KeyProvider, header: Header, uuid: str) -> Header:
    """The same data key wrapped under ``new``'s current KEK (the body is untouched; the header keeps
    its format version and segment size)."""
    data_key = unwrap_key(old, header, uuid, header.content_type)
    key_id, wrapped = new.wrap(data_key, context(uuid, header.content_type))
    return _header(header.content_type, key_id, wrapped, header.body_nonce, header.version, header.segment_size)


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


class DataKeyCache:
    """Recently unwrapped data keys, keyed by (KEK id, wrapped key, context): bounded in number and
    age, like a KMS client's data-key cache.

    Why: unwrapping costs an AES-GCM call with its own cipher context (~15-30 µs under OpenSSL 3,
    measured), a tenth of the whole budget a 0.5 MB read may add over Orthanc's own storage; an
    attachment read again (a viewer paging through a series, a study sent on after it was stored)
    skips it.  Sound: the same wrapped bytes under the same KEK and context unwrap to the same key,
    and an entry is only ever made by a successful unwrap (or by the wrap that produced the
    entry's bytes).  Only 32-byte data keys are kept, never file contents; they live in the process
    that holds the KEKs anyway.  The owner clears the cache when its KEKs change (a rotation that
    drops a KEK must stop its files opening at once)."""

    def __init__(self, size: int = 4096, max_age: float = 600.0):
        self.size, self.max_age = size, max_age
        self._keys: OrderedDict[tuple[str, bytes, bytes], tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: str, wrapped: bytes, context: bytes) -> bytes | None:
        entry_key = (key_id, wrapped, context)
        with self._lock:
            entry = self._keys.get(entry_key)
            if entry is None:
                return None
            if time.monotonic() - entry[1] > self.max_age:
                del self._keys[entry_key]
                return None
            self._keys.move_to_end(entry_key)
            return entry[0]

    def put(self, key_id: str, wrapped: bytes, context: bytes, data_key: bytes) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._keys[(key_id, bytes(wrapped), bytes(context))] = (data_key, time.monotonic())
            self._keys.move_to_end((key_id, bytes(wrapped), bytes(context)))
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)


class FileKeyProvider:
    """The KEKs of a key file, followed while Orthanc runs.

    Why it re-reads: ``pacs-bridge keys rotate-storage`` adds a KEK and re-wraps files while
    Orthanc serves them.  New files must move to the new KEK, a file re-wrapped a moment ago must
    open, and a KEK the finished rotation dropped must stop opening anything: every ``wrap`` and
    ``unwrap`` checks the file's stat (one ``os.stat``, microseconds beside the file I/O), and an
    unknown key id forces one re-read (a rewrite within the stat's time resolution).  A key file
    that becomes unreadable keeps the last good ring (noted in ``errors``), so a rotation mistake
    does not stop the PACS.  Unwrapped data keys are cached (:class:`DataKeyCache`) until the key
    file changes."""

    def __init__(self, path: str, *, cache: DataKeyCache | None = None, cache_writes: bool = True):
        self.path = path
        #: also cache the data key of every file written (a new attachment is often read soon after)
        self.cache_writes = cache_writes
        self._ring, self._stamp = read_key_file(path)
        self._lock = threading.Lock()
        self.cache = cache if cache is not None else DataKeyCache()
        self._generation = 0  # counts re-reads: a key unwrapped under an older ring is not cached
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
            finally:
                self._generation += 1
                self.cache.clear()  # the KEKs changed (or the file did): nothing unwrapped before counts

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
        generation = self._generation
        key_id, wrapped = self._ring.wrap(data_key, context)
        if self.cache_writes:
            with self._lock:
                if generation == self._generation:
                    self.cache.put(key_id, wrapped, context, data_key)
        return key_id, wrapped

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        self._refresh()  # a KEK dropped by a finished rotation stops working at once (and the cache is cleared)
        cached = self.cache.get(key_id, wrapped, context)
        if cached is not None:
            return cached
        generation, ring = self._generation, self._ring
        if key_id not in ring.key_ids:
            self._refresh(force=True)
            generation, ring = self._generation, self._ring
        data_key = ring.unwrap(key_id, wrapped, context)
        with self._lock:  # not cached if the ring changed meanwhile (it may have dropped this KEK)
            if generation == self._generation:
                self.cache.put(key_id, wrapped, context, data_key)
        return data_key
