"""Orthanc's image store, encrypted: the storage area the plugin registers with Orthanc.

orthanc-python 4.0's ``orthanc.RegisterStorageArea(create, read, remove)`` replaces Orthanc's
file-system storage: ``create(uuid, content_type, data)``, ``read(uuid, content_type) -> bytes``,
``remove(uuid, content_type)``, whole attachments (no range reads in that API), called with the
plugin's Python lock held (the crypto and the file I/O release it).  Every attachment is written as
an envelope (:mod:`bridge.core.envelope`): AES-256-GCM under a fresh data key, the data key
wrapped by the storage KEK, the attachment's uuid and content type as associated data.

Choices and why:

* **Orthanc's own layout** (``<root>/<uuid[0:2]>/<uuid[2:4]>/<uuid>``): an existing plaintext
  storage directory is the same tree, so it can be switched over and then migrated in place, online
  (``pacs-bridge storage encrypt-plaintext``); a file without the envelope magic is read as is only
  while ``plaintext_reads`` is on (the migration window), otherwise it is a read error.
* **Atomic writes**: a temp file in the target directory, fsync'd when Orthanc's
  ``SyncStorageArea`` asks for it (its default), then renamed; a crash never leaves half a file
  under an attachment's name.  Key rotation rewrites headers the same way, so a reader always sees
  a whole old file or a whole new one.
* **Fail closed, audited**: a file that does not open (altered, truncated, another attachment's
  file, an unknown KEK, plaintext outside the migration window) raises, so Orthanc answers an
  error instead of bytes, and ``on_failure`` gets a :class:`StorageFailure` (the plugin turns it
  into a ``storage.integrity_failure`` audit event).
* The **storage KEK is the Orthanc host's**, its own file (``kek_file``, mode 0600), not the
  bridge's KEK: a compromised PACS host must not unwrap the bridge's token signing keys, and the
  bridge host never holds the key to the images.

Stdlib + the core only (it runs inside Orthanc under Debian's Python).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.core import audit_events as ev
from bridge.core import envelope
from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.core.envelope import EnvelopeError, KeyProvider

#: the key of the storage settings in the plugin's configuration (bridge/pacs/plugin_config.py)
SETTINGS_KEY = "storage"
#: Orthanc's attachment content types (OrthancPluginContentType)
CONTENT_TYPES = {0: "unknown", 1: "dicom", 2: "dicom-as-json", 3: "dicom-until-pixel-data"}
#: Orthanc's attachment ids: lower-case hex uuids (anything else could walk out of the root)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TMP_PREFIX = ".pbtmp-"


class BufferPool:
    """A few reusable, page-aligned scratch buffers for whole files and their encryption.

    Why kept: a fresh 2 MB buffer per read or write costs more than the cipher.  Fresh memory is
    page-faulted in (512 faults per 2 MB), and glibc hands large freed blocks back to the kernel
    (its trim threshold), so the next call faults again: ~1000 faults per 2 MB read, measured, 4x the
    CPU of the decryption itself.  Kept buffers are already mapped.  Bounded: at most ``keep``
    buffers of at most ``max_bytes`` each are kept (larger attachments get a fresh buffer).

    Why page-aligned (anonymous ``mmap`` rather than ``bytearray``): the kernel copies a file from
    the page cache with ``rep movsb``, which on this AMD EPYC (Zen 3, FSRM) runs ~10x slower when
    the destination sits 8-16 bytes past the source's offset within a page, and a large
    ``bytearray``'s bytes start 16 bytes into a page (glibc's chunk header): a whole 2 MB file read
    from offset 0 took 750-1000 µs instead of 80 µs, measured.  A page-aligned buffer read from
    file offset 0 puts both at the same offset."""

    def __init__(self, keep: int = 8, max_bytes: int = 32 << 20):
        self.keep, self.max_bytes = keep, max_bytes
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def get(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, max(size, 1 << 20) if size <= self.max_bytes else size)

    def put(self, buf: mmap.mmap) -> None:
        if len(buf) > self.max_bytes:
            return
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
            else:  # keep the larger ones
                smallest = min(range(len(self._free)), key=lambda i: len(self._free[i]))
                if len(self._free[smallest]) < len(buf):
                    self._free[smallest] = buf


POOL = BufferPool()


class StorageConfigError(ValueError):
    """The ``storage`` settings are unusable (names the key and the source)."""


class StorageReadError(OSError):
    """An attachment that cannot be returned (Orthanc answers an error, never other bytes)."""


@dataclass(frozen=True)
class StorageSettings:
    """The plugin's ``storage`` object: where the encrypted files live and which KEK file wraps them."""

    directory: str
    kek_file: str
    #: read files without the envelope as plaintext (the migration window only)
    plaintext_reads: bool = False
    #: create the key file at the first start, when it is missing and no file in ``directory`` is
    #: encrypted yet (a fresh store); missing while encrypted files exist is an error (restore it)
    create_key: bool = False

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> StorageSettings:
        if not isinstance(data, Mapping):
            raise StorageConfigError(f"{source}: {SETTINGS_KEY} must be an object")
        unknown = sorted(set(data) - {"directory", "kek_file", "plaintext_reads", "create_key"})
        if unknown:
            raise StorageConfigError(f"{source}: {SETTINGS_KEY}: unknown key(s) {', '.join(unknown)}")
        for key in ("directory", "kek_file"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise StorageConfigError(f"{source}: {SETTINGS_KEY}.{key} is required (a path)")
        flags = {}
        for key in ("plaintext_reads", "create_key"):
            flags[key] = data.get(key, False)
            if not isinstance(flags[key], bool):
                raise StorageConfigError(f"{source}: {SETTINGS_KEY}.{key} must be true or false")
        return cls(data["directory"], data["kek_file"], **flags)

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {"directory": self.directory, "kek_file": self.kek_file}
        for key in ("plaintext_reads", "create_key"):
            if getattr(self, key):
                out[key] = True
        return out


@dataclass(frozen=True)
class StorageFailure:
    """One attachment that could not be read or written, for the audit trail (no file content)."""

    operation: str  # "read" | "create"
    uuid: str
    content_type: int
    reason: str  # EnvelopeError.reason, or "io-error"
    detail: str

    def to_event(self, pacs: str) -> ev.AuditEvent:
        kind = CONTENT_TYPES.get(self.content_type, str(self.content_type))
        return ev.AuditEvent(
            type=AuditEventType.STORAGE_INTEGRITY_FAILURE,
            outcome=Outcome.SERIOUS_FAILURE,
            actor=ev.Actor(client_id="orthanc-storage"),
            objects=(ev.ParticipantObject(ev.ObjectKind.ATTACHMENT, self.uuid, kind),),
            details={"pacs": pacs, "operation": self.operation, "content_type": kind,
                     "reason": self.reason, "detail": self.detail},
            description=f"stored attachment {self.uuid} ({kind}) refused: {self.reason}",
        )


def attachment_file(root: str, uuid: str) -> str:
    """Orthanc's file-system layout for ``uuid``, as a string (pathlib costs 15 µs a read on the
    read path); a uuid that is not Orthanc's shape is refused."""
    if not isinstance(uuid, str) or not _UUID.match(uuid):
        raise StorageReadError(f"not an attachment id: {uuid!r}")
    return f"{root}/{uuid[0:2]}/{uuid[2:4]}/{uuid}"


def attachment_path(root: str | Path, uuid: str) -> Path:
    """:func:`attachment_file` as a :class:`Path`."""
    return Path(attachment_file(str(root), uuid))


def _read_all(fd: int, view: memoryview) -> int:
    """Read ``fd`` into ``view`` until end of file or ``view`` is full; the byte count."""
    got = 0
    while got < len(view) and (n := os.readv(fd, [view[got:]])):
        got += n
    return got


def write_atomically(path: Path, pieces: tuple[bytes | memoryview, ...], *, sync: bool) -> None:
    """``pieces`` written one after the other into a temp file beside ``path``, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class EncryptedStorageArea:
    """create / read / remove for Orthanc; each attachment one envelope file under ``root``."""

    def __init__(
        self,
        root: str | Path,
        keys: KeyProvider,
        *,
        plaintext_reads: bool = False,
        sync: bool = True,
        on_failure: Callable[[StorageFailure], None] | None = None,
    ):
        self.root = Path(root)
        self._root = str(self.root)
        self.keys = keys
        self.plaintext_reads = plaintext_reads
        self.sync = sync
        self.on_failure = on_failure
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _fail(self, operation: str, uuid: str, content_type: int, reason: str, detail: str) -> StorageReadError:
        if self.on_failure is not None:
            with contextlib.suppress(Exception):  # reporting must not hide the error itself
                self.on_failure(StorageFailure(operation, str(uuid)[:64], int(content_type), reason, detail))
        return StorageReadError(f"attachment {str(uuid)[:64]} ({CONTENT_TYPES.get(int(content_type), content_type)}): "
                                f"{detail}")

    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        path = attachment_path(self.root, uuid)
        scratch = POOL.get(envelope.sealed_size(len(data)))
        try:
            try:
                header, body = envelope.seal(self.keys, uuid, int(content_type), data, out=scratch)
            except EnvelopeError as exc:
                raise self._fail("create", uuid, content_type, exc.reason, str(exc)) from None
            try:
                write_atomically(path, (header, body), sync=self.sync)
            finally:
                body.release()  # the view into the scratch buffer
        finally:
            POOL.put(scratch)

    def read(self, uuid: str, content_type: int) -> bytes:
        """The attachment's plaintext: the whole file read into a kept buffer (one ``read`` when the
        file is as long as ``fstat`` says), its header parsed there, the body decrypted straight
        into the ``bytes`` returned (:func:`bridge.core.envelope.open_body`)."""
        path = attachment_file(self._root, uuid)
        content_type = int(content_type)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StorageReadError(f"attachment {uuid}: no such file") from None
        buf = None
        try:
            try:
                size = os.fstat(fd).st_size
                buf = POOL.get(size + 1)
                got = _read_all(fd, memoryview(buf)[:size + 1])
            finally:
                os.close(fd)
            if got > size:
                raise EnvelopeError("damaged", "the file changed while it was read")
            with memoryview(buf)[:got] as data:
                if not envelope.is_envelope(data):
                    if not self.plaintext_reads:
                        raise self._fail("read", uuid, content_type, "not-encrypted", "the file is not encrypted "
                                         "and plaintext reads are off (storage.plaintext_reads)")
                    return bytes(data)
                header = envelope.parse_header(data)
                with data[header.length:] as body:
                    return envelope.open_body(self.keys, header, uuid, content_type, body)
        except EnvelopeError as exc:
            raise self._fail("read", uuid, content_type, exc.reason, str(exc)) from None
        finally:
            if buf is not None:
                POOL.put(buf)

    def remove(self, uuid: str, content_type: int) -> None:
        path = attachment_path(self.root, uuid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for parent in (path.parent, path.parent.parent):  # as Orthanc does: drop emptied directories
            try:
                parent.rmdir()
            except OSError:
                break


class UnavailableStorageArea:
    """Registered when the storage settings exist but cannot be used (no KEK file...): every call
    fails, so Orthanc stores nothing in clear and serves nothing unverified until it is fixed."""

    def __init__(self, reason: str):
        self.reason = reason

    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        raise StorageReadError(f"encrypted storage unavailable: {self.reason}")

    def read(self, uuid: str, content_type: int) -> bytes:
        raise StorageReadError(f"encrypted storage unavailable: {self.reason}")

    def remove(self, uuid: str, content_type: int) -> None:
        raise StorageReadError(f"encrypted storage unavailable: {self.reason}")


def attachments(root: str | Path) -> Iterator[tuple[str, Path]]:
    """(uuid, path) of every attachment file in Orthanc's layout under ``root`` (temp files skipped)."""
    base = Path(root)
    for first in sorted(base.iterdir()) if base.is_dir() else ():
        if len(first.name) != 2 or not first.is_dir():
            continue
        for second in sorted(first.iterdir()):
            if len(second.name) != 2 or not second.is_dir():
                continue
            for path in sorted(second.iterdir()):
                name = path.name
                if name.startswith(TMP_PREFIX) or not path.is_file():
                    continue
                with contextlib.suppress(StorageReadError):
                    if attachment_path(base, name) == path:
                        yield name, path


def holds_encrypted_files(root: str | Path) -> bool:
    """Whether any attachment under ``root`` is an envelope (stops at the first)."""
    for _, path in attachments(root):
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            if envelope.is_envelope(fh.read(len(envelope.MAGIC))):
                return True
    return False


def ensure_key_file(settings: StorageSettings) -> bool:
    """With ``create_key``: create the missing key file of a store that holds no encrypted file yet;
    True when it was created.  A missing key file beside encrypted files is an error: a new KEK would
    open none of them (restore the file from its backup)."""
    if not settings.create_key or os.path.exists(settings.kek_file):
        return False
    if holds_encrypted_files(settings.directory):
        raise EnvelopeError("bad-key-file", f"{settings.kek_file}: missing, and {settings.directory} holds "
                                            "encrypted files: restore the key file from its backup")
    os.makedirs(os.path.dirname(os.path.abspath(settings.kek_file)), mode=0o700, exist_ok=True)
    envelope.create_key_file(settings.kek_file)
    return True


def storage_section(plugin_data: Mapping[str, Any] | None) -> Any:
    """The raw ``storage`` value of the plugin's configuration (None when absent)."""
    return (plugin_data or {}).get(SETTINGS_KEY)


def build(
    settings: StorageSettings,
    *,
    sync: bool = True,
    on_failure: Callable[[StorageFailure], None] | None = None,
) -> EncryptedStorageArea:
    """The storage area of ``settings`` with its key file (raises EnvelopeError/OSError when unusable)."""
    ensure_key_file(settings)
    keys = envelope.FileKeyProvider(settings.kek_file)
    return EncryptedStorageArea(settings.directory, keys, plaintext_reads=settings.plaintext_reads, sync=sync,
                                on_failure=on_failure)
