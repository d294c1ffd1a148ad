"""Ship audit messages to the hospital's audit repository: RFC 5424 syslog over TLS (RFC 5425),
as IHE ATNA ITI-20 asks, with a disk spool so nothing is lost while the collector is down.

Format: ``<85>1 TIMESTAMP HOST pacs-sso-bridge PROCID IHE+RFC-3881 [SD] BOM<AuditMessage/>``:
PRI 85 = facility 10 (security/authorization) * 8 + severity 5 (notice); MSGID ``IHE+RFC-3881``;
the structured data ``[pacsbridge@32473 seq="..." eventID="..." correlationID="..."]`` lets a
collector de-duplicate and join with the bridge's request logs;
the MSG is the PS3.15 A.5 XML, UTF-8, marked with a BOM (RFC 5424 6.4).  Framing over TLS is
octet counting: ``LEN SP MSG`` (RFC 5425 4.3).  With ``audit.syslog_client_cert_file`` /
``_key_file`` the bridge presents a client certificate (mutual TLS, RFC 5425 5.1; IHE ATNA's
secure node): the collector can then admit the bridge alone.

Delivery: every message is written to the spool (``<spool>/<n:020d>.msg``, fsynced, numbered
under a lock every writing process shares, published with ``link``) before any send; ``serve``
fills it from the database and drains it (bridge/audit/jobs.py).
:meth:`SyslogSender.flush` (one flusher at a time, ``flock``) sends the spooled messages (a
file may hold a batch of frames) in order over one TLS connection and deletes each file only
after it was handed to TLS, stopping at the first error (the frames not yet sent stay spooled).
So a message is never lost and never reordered.  A crash between a send and the delete re-sends
that file's messages on the next flush: the collector sees the same ``seq``/``eventID`` twice
(RFC 5425 has no application acknowledgement, so this small window cannot be closed on the sender side alone).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.audit.dicom_xml import to_xml
from bridge.audit.store import Appended
from bridge.core.audit_events import AuditEvent, format_time
from bridge.core.envelope import EnvelopeError, KeyProvider
from bridge.core.sealed import SYSLOG_SPOOL, is_sealed, open_blob, seal_blob

log = logging.getLogger(__name__)

FACILITY = 10  # security/authorization messages (authpriv is 10 in RFC 5424 table 1)
SEVERITY = 5  # notice
PRI = FACILITY * 8 + SEVERITY  # 85
MSGID = "IHE+RFC-3881"
APP_NAME = "pacs-sso-bridge"
SD_ID = "pacsbridge@32473"  # 32473: the PEN reserved for documentation (RFC 5612)
BOM = "\ufeff"


def _header_field(value: str | None, limit: int) -> str:
    """PRINTUSASCII without spaces, or the NILVALUE '-'."""
    if not value:
        return "-"
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)
    return clean[:limit] or "-"


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(
    event: AuditEvent,
    *,
    seq: int | None = None,
    hostname: str | None = None,
    app_name: str = APP_NAME,
    procid: str | None = None,
    xml: str | None = None,
    severity: int = SEVERITY,
) -> bytes:
    """One RFC 5424 syslog message (without transport framing); ``severity`` 1 (alert) for the
    messages that must wake somebody (a break-glass access), else 5 (notice)."""
    host = _header_field(hostname or socket.gethostname(), 255)
    ts = format_time(event.time)  # RFC 3339 UTC with microseconds (RFC 5424 allows 6 digits)
    params = f'eventID="{_sd_escape(event.event_id)}"'
    if seq is not None:
        params = f'seq="{seq}" ' + params
    if event.correlation_id:  # A.5 XML has no place for it; collectors join on it with the bridge's logs
        params += f' correlationID="{_sd_escape(event.correlation_id)}"'
    sd = f"[{SD_ID} {params}]"
    header = (
        f"<{FACILITY * 8 + severity}>1 {ts} {host} {_header_field(app_name, 48)} "
        f"{_header_field(procid or str(os.getpid()), 128)} "
        f"{MSGID} {sd} "
    )
    return header.encode("ascii") + (BOM + (xml if xml is not None else to_xml(event))).encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting frame."""
    return str(len(message)).encode("ascii") + b" " + message


def split_frames(data: bytes) -> list[bytes]:
    """The frames of a spool file (each still framed, ready to send)."""
    out, pos = [], 0
    while pos < len(data):
        space = data.index(b" ", pos)
        end = space + 1 + int(data[pos:space])
        out.append(data[pos:end])
        pos = end
    return out


#: the associated-data name of every spool file (files are renamed when published, so not the path)
SPOOL_NAME = "audit-syslog-spool"


@dataclass
class SyslogTarget:
    host: str
    port: int = 6514
    ca_file: Path | None = None
    #: name to check in the collector's certificate (default: ``host``)
    server_name: str | None = None
    timeout: float = 5.0
    #: the bridge's client certificate and key (PEM) for a collector that requires mutual TLS
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


class SyslogSender:
    """Disk-spooled RFC 5425 sender.  Use :meth:`enqueue` (or pass :meth:`listener` to the
    AuditStore) and call :meth:`flush` from a timer; :meth:`start` runs that timer in a thread."""

    def __init__(self, target: SyslogTarget, spool_dir: Path, *, render: Callable[[AuditEvent], str] | None = None,
                 keys: KeyProvider | None = None, severity: int = SEVERITY):
        self.target = target
        self.severity = severity
        #: seals each spool file (bridge/core/sealed.py): the messages name patients and users
        self.keys = keys
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        os.chmod(self.spool, 0o700)  # audit content: patient ids, usernames
        self.render = render or to_xml
        self._lock = threading.Lock()
        self._counter = self._last_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- spool
    def _last_counter(self) -> int:
        names = [p.stem for p in self.spool.glob("*.msg")]
        return max((int(n) for n in names if n.isdigit()), default=0)

    def pending(self) -> list[Path]:
        return sorted(self.spool.glob("*.msg"))

    def enqueue(self, event: AuditEvent, seq: int | None = None) -> Path:
        """Write the message to the spool (durably) before anything is sent."""
        return self.enqueue_many([(event, seq)])

    def enqueue_many(self, items: Sequence[tuple[AuditEvent, int | None]]) -> Path:
        """Write messages to one spool file (framed, one fsync for all: a committed batch of the
        store costs one disk flush, not one per record) before anything is sent.

        Several writers share one spool (the web workers, the CLI, ``serve``), so the next number
        comes from ``.counter`` under an exclusive ``flock`` and the file is published with
        ``link`` (which never overwrites): numbers are unique and follow the order of enqueueing."""
        data = b"".join(frame(format_message(e, seq=q, xml=self.render(e), severity=self.severity))
                        for e, q in items)
        with self._lock:
            tmp = self.spool / f".{os.getpid()}-{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._seal(data))
                f.flush()
                os.fsync(f.fileno())
            try:
                with self._spool_lock(".counter.lock"):
                    while True:
                        self._counter = max(self._counter, self._read_counter()) + 1
                        path = self.spool / f"{self._counter:020d}.msg"
                        try:
                            os.link(tmp, path)
                            break
                        except FileExistsError:  # a writer without the counter file: skip past it
                            self._counter = max(self._counter, self._last_counter())
                    self._write_counter(self._counter)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    @contextlib.contextmanager
    def _spool_lock(self, name: str) -> Iterator[None]:
        """An exclusive lock shared by every process using this spool directory."""
        fd = os.open(self.spool / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_counter(self) -> int:
        try:
            return int((self.spool / ".counter").read_text() or 0)
        except (OSError, ValueError):
            return self._last_counter()

    def _write_counter(self, value: int) -> None:
        tmp = self.spool / f".counter.{os.getpid()}"
        tmp.write_text(str(value))
        tmp.replace(self.spool / ".counter")

    def listener(self, batch: Sequence[Appended]) -> None:
        """For ``AuditStore(listeners=[sender.listener])``: spool each committed batch."""
        if batch:
            self.enqueue_many([(a.event, a.seq) for a in batch])

    # ---------------------------------------------------------------- sending
    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.target.ca_file) if self.target.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.target.client_cert_file is not None:  # RFC 5425 5.1: the client authenticates too
            ctx.load_cert_chain(str(self.target.client_cert_file),
                                str(self.target.client_key_file) if self.target.client_key_file else None)
        return ctx

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.target.host, self.target.port), timeout=self.target.timeout)
        try:
            return self._context().wrap_socket(raw, server_hostname=self.target.server_name or self.target.host)
        except BaseException:
            raw.close()
            raise

    def flush(self) -> int:
        """Send every spooled message in order; return how many were delivered.  Errors (collector
        down, certificate refused) are logged and leave the rest spooled for the next flush."""
        with self._lock, self._spool_lock(".flush.lock"):  # one sender at a time: each message once
            files = self.pending()
            if not files:
                return 0
            sent = 0
            try:
                with self._connect() as sock:
                    for path in files:
                        data = self._unseal(path)
                        if data is None:
                            continue
                        frames = split_frames(data)
                        done = 0
                        try:
                            for framed in frames:
                                sock.sendall(framed)
                                done += 1
                                sent += 1
                        except (OSError, ssl.SSLError):
                            self._keep(path, frames[done:])  # what was handed to TLS is not sent again
                            raise
                        path.unlink()
                    # close_notify without waiting for the collector's (rsyslog does not send one back)
                    sock.setblocking(False)
                    with contextlib.suppress(OSError, ssl.SSLError):
                        sock.unwrap()
            except (OSError, ssl.SSLError) as exc:
                log.warning(
                    "audit syslog %s:%s: %s (%d message(s) stay spooled)",
                    self.target.host,
                    self.target.port,
                    exc,
                    len(files) - sent,
                )
            return sent

    def _seal(self, data: bytes) -> bytes:
        return seal_blob(self.keys, SPOOL_NAME, SYSLOG_SPOOL, data) if self.keys is not None else data

    def _unseal(self, path: Path) -> bytes | None:
        """A spool file's frames (a plaintext file of an older bridge is read as it is).  One that
        does not open -- altered, or sealed under a KEK this bridge does not have -- is set aside as
        ``*.damaged`` and named in the log: never sent half-read, never deleted."""
        raw = path.read_bytes()
        if self.keys is None and not is_sealed(raw):
            return raw
        try:
            if self.keys is None:
                raise EnvelopeError("unknown-key", "the spool file is sealed but no KEK is configured")
            return open_blob(self.keys, SPOOL_NAME, SYSLOG_SPOOL, raw, plaintext_ok=True)
        except EnvelopeError as exc:
            aside = path.with_suffix(".damaged")
            path.replace(aside)
            log.error("audit syslog spool: %s does not open (%s: %s); kept as %s", path.name, exc.reason, exc, aside)
            return None

    def _keep(self, path: Path, frames: list[bytes]) -> None:
        tmp = path.with_suffix(".keep")
        with open(tmp, "wb") as f:
            f.write(self._seal(b"".join(frames)))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def start(self, interval: float = 2.0) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                self.flush()

        self._thread = threading.Thread(target=run, name="audit-syslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self.flush()


#: RFC 5424 severity 1: action must be taken immediately
ALERT = 1


def syslog_sender(settings: Any, *, spool_dir: Path | None = None, severity: int = SEVERITY) -> SyslogSender | None:
    """The sender of the configured collector (``audit.syslog_*``), or None when none is set.
    An alert sender (a break-glass access) uses its own ``spool_dir`` and ``severity=ALERT``."""
    a = settings.audit
    if not a.syslog_host:
        return None
    from bridge.kek import audit_file_keys

    return SyslogSender(SyslogTarget(a.syslog_host, a.syslog_port, a.syslog_ca_file,
                                     client_cert_file=a.syslog_client_cert_file,
                                     client_key_file=a.syslog_client_key_file), spool_dir or a.spool_dir,
                        keys=audit_file_keys(settings), severity=severity)
