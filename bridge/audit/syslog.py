"""Ship audit messages to the hospital's audit repository: RFC 5424 syslog over TLS (RFC 5425),
as IHE ATNA ITI-20 asks, with a disk spool so nothing is lost while the collector is down.

Format: ``<85>1 TIMESTAMP HOST pacs-sso-bridge PROCID IHE+RFC-3881 [SD] BOM<AuditMessage/>``:
PRI 85 = facility 10 (security/authorization) * 8 + severity 5 (notice); MSGID ``IHE+RFC-3881``;
the structured data ``[pacsbridge@32473 seq="..." eventID="..." correlationID="..."]`` lets a
collector de-duplicate and join with the bridge's request logs;
the MSG is the PS3.15 A.5 XML, UTF-8, marked with a BOM (RFC 5424 6.4).  Framing over TLS is
octet counting: ``LEN SP MSG`` (RFC 5425 4.3).

Delivery: every message is written to the spool (``<spool>/<seq:020d>.msg``, fsynced, atomic
rename) before any send; :meth:`SyslogSender.flush` sends the spooled messages in order over
one TLS connection and deletes each file only after it was handed to TLS, stopping at the first
error (the rest waits for the next flush).  So a message is never lost and never reordered.  A
crash between a send and the delete re-sends that one message on the next flush: the collector
sees the same ``seq``/``eventID`` twice (RFC 5425 has no application acknowledgement, so this
small window cannot be closed on the sender side alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.audit.dicom_xml import to_xml
from bridge.audit.events import AuditEvent, format_time
from bridge.audit.store import Appended

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
) -> bytes:
    """One RFC 5424 syslog message (without transport framing)."""
    host = _header_field(hostname or socket.gethostname(), 255)
    ts = format_time(event.time)  # RFC 3339 UTC with microseconds (RFC 5424 allows 6 digits)
    params = f'eventID="{_sd_escape(event.event_id)}"'
    if seq is not None:
        params = f'seq="{seq}" ' + params
    if event.correlation_id:  # A.5 XML has no place for it; collectors join on it with the bridge's logs
        params += f' correlationID="{_sd_escape(event.correlation_id)}"'
    sd = f"[{SD_ID} {params}]"
    header = (
        f"<{PRI}>1 {ts} {host} {_header_field(app_name, 48)} {_header_field(procid or str(os.getpid()), 128)} "
        f"{MSGID} {sd} "
    )
    return header.encode("ascii") + (BOM + (xml if xml is not None else to_xml(event))).encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting frame."""
    return str(len(message)).encode("ascii") + b" " + message


@dataclass
class SyslogTarget:
    host: str
    port: int = 6514
    ca_file: Path | None = None
    #: name to check in the collector's certificate (default: ``host``)
    server_name: str | None = None
    timeout: float = 5.0


class SyslogSender:
    """Disk-spooled RFC 5425 sender.  Use :meth:`enqueue` (or pass :meth:`listener` to the
    AuditStore) and call :meth:`flush` from a timer; :meth:`start` runs that timer in a thread."""

    def __init__(self, target: SyslogTarget, spool_dir: Path, *, render: Callable[[AuditEvent], str] | None = None):
        self.target = target
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
        data = format_message(event, seq=seq, xml=self.render(event))
        with self._lock:
            self._counter += 1
            path = self.spool / f"{self._counter:020d}.msg"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        return path

    def listener(self, appended: Appended) -> None:
        """For ``AuditStore(listeners=[sender.listener])``: spool each committed record."""
        self.enqueue(appended.event, appended.seq)

    # ---------------------------------------------------------------- sending
    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.target.ca_file) if self.target.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
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
        with self._lock:
            files = self.pending()
            if not files:
                return 0
            sent = 0
            try:
                with self._connect() as sock:
                    for path in files:
                        sock.sendall(frame(path.read_bytes()))
                        path.unlink()
                        sent += 1
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
