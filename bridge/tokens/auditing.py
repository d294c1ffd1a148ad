"""Token service events -> the audit trail, without a database write on the request path.

``/token`` must answer in well under a millisecond of our own time; one hash-chained append per
request would serialise every worker on the chain head.  Events are queued and appended in
batches (``AuditStore.append_many``) by a daemon thread every ``flush_seconds``; at exit the
queue is flushed.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from bridge.audit.codes import AuditEventType, Outcome
from bridge.audit.events import Actor, AuditEvent, ParticipantObject, token, user

log = logging.getLogger(__name__)

_FAILURES = {AuditEventType.ACCESS_DENIED: Outcome.MINOR_FAILURE, AuditEventType.MFA_FAILURE: Outcome.MINOR_FAILURE}


def to_event(kind: AuditEventType, details: Mapping[str, Any], issuer: str) -> AuditEvent:
    """One token-service event as an audit event (actor = the user when known, else the client)."""
    sub, username, jti = details.get("subject"), details.get("username"), details.get("jti")
    objects: list[ParticipantObject] = []
    if sub:
        objects.append(user(str(sub), username))
    if jti:
        objects.append(token(str(jti)))
    actor = Actor(
        user_id=f"{sub}@{issuer}" if sub else None, username=username, client_id=details.get("client_id") or None,
        network_address=details.get("network_address") or None,  # added by bridge/web/client.py in a request
    )
    extra = {k: v for k, v in details.items()
             if k not in ("subject", "username", "jti", "client_id", "network_address")}
    return AuditEvent(type=kind, outcome=_FAILURES.get(kind), actor=actor, objects=tuple(objects), details=extra)


class BufferedAuditSink:
    """Callable sink ``(kind, details)`` for :class:`bridge.tokens.service.TokenService`."""

    def __init__(self, store: Any, issuer: str, flush_seconds: float = 0.25, max_batch: int = 500):
        self.store = store
        self.issuer = issuer
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self._queue: queue.Queue[AuditEvent] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-flush", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def __call__(self, kind: AuditEventType, details: Mapping[str, Any]) -> None:
        self._queue.put(to_event(kind, details, self.issuer))

    def flush(self) -> int:
        batch: list[AuditEvent] = []
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if batch:
            try:
                self.store.append_many(batch)
            except Exception:  # keep serving; the events go back for the next attempt
                log.exception("audit: appending %d token events failed; will retry", len(batch))
                for ev in batch:
                    self._queue.put(ev)
                return 0
        return len(batch)

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.flush_seconds):
            while self.flush() >= self.max_batch:
                pass
