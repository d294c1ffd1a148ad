"""The alert of a break-glass access: an alert-severity syslog message and a webhook, both spooled.

Why spooled: the alert is the point of break-glass (somebody must look now), and the collector or
the webhook's receiver may be down at the very moment of an emergency.  Each alert is written to
disk (fsynced) before any send, sent in order, and deleted only after the receiver took it; what
fails stays for the next attempt (the next request, the review queue page, ``serve``).  The grant
itself never waits for an alert: it is given once its audit record is stored.

The syslog alert is the audit event's PS3.15 A.5 message at RFC 5424 severity 1 (alert), through
the audit pipeline's own sender (:class:`bridge.audit.syslog.SyslogSender`) over its own spool.
The webhook is a JSON POST (TLS verified against ``break_glass.webhook_ca_file`` or the system
store) carrying who, what, why and until when -- never a token, a cookie or a secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from bridge.audit.syslog import ALERT, SyslogSender, syslog_sender
from bridge.breakglass.service import Item
from bridge.core.audit_events import AuditEvent
from bridge.http import pinned_session

log = logging.getLogger(__name__)

#: the webhook payload's ``type`` (a receiver may get other kinds later: review escalations)
EVENT = "break-glass.started"


def payload(item: Item, review_url: str | None) -> dict[str, Any]:
    """What the webhook receives: who asked, for which study or patient, why, until when."""
    body = {"type": EVENT, "grant": item.to_json()}
    if review_url:
        body["review_url"] = review_url
    return body


class Webhook:
    """A disk-spooled JSON POST to one URL (see the module docstring)."""

    def __init__(self, url: str, spool_dir: Path, *, ca_file: str | None = None, timeout: float = 5.0):
        self.url = url
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        os.chmod(self.spool, 0o700)  # patient ids and reasons
        self.ca_file = ca_file
        self.timeout = timeout
        self._lock = threading.Lock()

    def pending(self) -> list[Path]:
        return sorted(self.spool.glob("*.json"))

    def enqueue(self, body: dict[str, Any]) -> Path:
        """Write one message durably (a unique, ordered name: time, then a random part)."""
        data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        name = f"{time.time_ns():020d}-{os.urandom(4).hex()}"
        tmp = self.spool / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        path = self.spool / f"{name}.json"
        tmp.replace(path)
        return path

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        fd = os.open(self.spool / ".flush.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def flush(self) -> int:
        """POST the spooled messages in order; delete each after a 2xx; stop at the first failure."""
        sent = 0
        with self._lock, self._flock():
            files = self.pending()
            if not files:
                return 0
            http = pinned_session(self.ca_file)
            for path in files:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # another process sent it meanwhile
                    continue
                try:
                    res = http.post(self.url, data=data, timeout=self.timeout, allow_redirects=False,
                                    headers={"Content-Type": "application/json", "User-Agent": "pacs-sso-bridge"})
                except requests.RequestException as exc:
                    log.warning("break-glass webhook: %s (%d alert(s) stay spooled)", type(exc).__name__,
                                len(files) - sent)
                    break
                if not 200 <= res.status_code < 300:
                    log.warning("break-glass webhook: HTTP %s (%d alert(s) stay spooled)", res.status_code,
                                len(files) - sent)
                    break
                path.unlink(missing_ok=True)
                sent += 1
        return sent


class Alerts:
    """Both alert channels of one deployment; calling it spools and tries to send at once."""

    def __init__(self, syslog: SyslogSender | None, webhook: Webhook | None, review_url: str | None = None):
        self.syslog = syslog
        self.webhook = webhook
        self.review_url = review_url

    def __call__(self, event: AuditEvent, item: Item) -> None:
        try:
            if self.syslog is not None:
                self.syslog.enqueue(event)
            if self.webhook is not None:
                self.webhook.enqueue(payload(item, self.review_url))
        except OSError:  # the spool is the last resort; the audit record exists, the grant stands
            log.exception("break-glass alert could not be spooled")
        # sent beside the request: a collector or receiver that is down must not hold up an emergency
        threading.Thread(target=self.flush, name="break-glass-alert", daemon=True).start()

    def flush(self) -> None:
        """Send what is spooled (never raises: an alert channel down must not fail a request)."""
        for channel in (self.syslog, self.webhook):
            if channel is None:
                continue
            try:
                channel.flush()
            except Exception:
                log.exception("break-glass alert channel %s failed", type(channel).__name__)


def from_settings(settings: Any) -> Alerts:
    """The alert channels configured: ``audit.syslog_*`` (unless ``break_glass.syslog_alert`` is off)
    and ``break_glass.webhook_url``; spools below ``audit.spool_dir``."""
    bg = settings.break_glass
    base = Path(settings.audit.spool_dir)
    syslog = syslog_sender(settings, spool_dir=base / "break-glass-syslog", severity=ALERT) \
        if bg.syslog_alert else None
    webhook = None
    if bg.webhook_url:
        webhook = Webhook(bg.webhook_url, base / "break-glass-webhook",
                          ca_file=str(bg.webhook_ca_file) if bg.webhook_ca_file else None,
                          timeout=bg.webhook_timeout_seconds)
    public = str(settings.bridge.public_url).rstrip("/")
    review = public + settings.gateway.prefix + "/break-glass/reviews" if settings.gateway.enabled else None
    return Alerts(syslog, webhook, review)
