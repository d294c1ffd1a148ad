"""Load through the dev stack's HAProxy, for the failover benchmark (bench/ha.py) and the failover
test (tests/integration/ha): a realistic mix of the bridge's hot endpoints, bounded in count and
time, loopback only.

The mix: 65 % token exchanges (``POST /token``, RFC 8693: the viewer's main call), 20 % JWKS
(``GET /jwks.json``, what PACS verifiers poll), 10 % introspection (``POST /introspect`` of a
PACS token, by the confidential ``pacs-tools`` client) and 5 % audit intake (``POST
/audit/events``: one ``study.queried`` event as the Orthanc plugin ships them).  A 202 from the
intake *acknowledges* its event: it must be in the audit trail, whatever happens afterwards.
Every answer is recorded with the monotonic time it *started*, so the seconds around a SIGKILL
can be told apart.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from bridge.http import pinned_session

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
MIX = (("token", 0.65), ("jwks", 0.2), ("introspect", 0.1), ("ingest", 0.05))


@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic() when the request was sent
    kind: str
    status: int  # 0: no HTTP answer (connection refused/reset)
    ms: float
    #: the ``jti`` of an issued token (a 200 exchange), the ``event_id`` of an acknowledged intake
    ref: str | None = None


@dataclass
class Target:
    url: str  # HAProxy's
    ca_file: str
    subject_tokens: list[str]  # Keycloak access tokens of MFA logins
    client_id: str = "pacs-viewer"
    introspect_auth: tuple[str, str] | None = None  # (client id, secret)
    ingest_token: str | None = None  # audit.ingest_token
    correlation_id: str = "bench-ha"  # marks the intake events of this run


@dataclass
class Load:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sample) -> None:
        with self.lock:
            self.samples.append(s)


def _one(http: requests.Session, t: Target, kind: str, pacs_tokens: list[str]) -> tuple[int, str | None]:
    if kind == "jwks":
        return http.get(f"{t.url}/jwks.json", timeout=10).status_code, None
    if kind == "ingest" and t.ingest_token:
        from bridge.core import audit_events as ev
        from bridge.core.audit_codes import AuditEventType

        event = ev.AuditEvent(AuditEventType.STUDY_QUERIED, actor=ev.Actor(client_id="bench-ha"),
                              correlation_id=t.correlation_id, details={"bench": True})
        r = http.post(f"{t.url}/audit/events", json={"events": [event.to_dict()]}, timeout=10,
                      headers={"Authorization": f"Bearer {t.ingest_token}"})
        return r.status_code, event.event_id if r.status_code == 202 else None
    if kind == "introspect" and t.introspect_auth and pacs_tokens:
        r = http.post(f"{t.url}/introspect", data={"token": random.choice(pacs_tokens)},  # noqa: S311
                      auth=t.introspect_auth, timeout=10)
        return r.status_code, None
    r = http.post(f"{t.url}/token", timeout=10, data={
        "grant_type": EXCHANGE, "client_id": t.client_id, "subject_token_type": ACCESS_TOKEN,
        "subject_token": random.choice(t.subject_tokens)})  # noqa: S311 - load mix, not security
    if r.status_code != 200:
        return r.status_code, None
    token = r.json()["access_token"]
    if len(pacs_tokens) < 50:
        pacs_tokens.append(token)
    import jwt

    return 200, str(jwt.decode(token, options={"verify_signature": False})["jti"])


def drive(t: Target, *, threads: int = 4, seconds: float = 8.0, max_requests: int = 50_000,
          during: Callable[[float], None] | None = None) -> list[Sample]:
    """Run the mix from ``threads`` clients for ``seconds`` (or ``max_requests`` in all);
    ``during(elapsed)`` is called from a separate thread about every 50 ms (e.g. to kill an
    instance at a given second).  Returns every request's sample."""
    load = Load()
    stop = threading.Event()
    t0 = time.monotonic()
    budget = [max_requests]
    budget_lock = threading.Lock()

    def client() -> None:
        http = pinned_session(t.ca_file)
        pacs_tokens: list[str] = []
        while not stop.is_set():
            with budget_lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            kind = random.choices([k for k, _ in MIX], [w for _, w in MIX])[0]  # noqa: S311
            start = time.monotonic()
            try:
                status, ref = _one(http, t, kind, pacs_tokens)
            except requests.RequestException:
                status, ref = 0, None
                http.close()
                http = pinned_session(t.ca_file)
            load.add(Sample(start, kind, status, (time.monotonic() - start) * 1000, ref))

    workers = [threading.Thread(target=client, name=f"load-{i}", daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        while time.monotonic() - t0 < seconds and any(w.is_alive() for w in workers):
            if during is not None:
                during(time.monotonic() - t0)
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    return sorted(load.samples, key=lambda s: s.start)


def failed(s: Sample) -> bool:
    """A failure as a client sees it: no answer, or a 5xx (a 4xx would be the client's fault)."""
    return s.status == 0 or s.status >= 500


def summary(samples: list[Sample], since: float | None = None, until: float | None = None, *,
            overlapping: bool = False) -> dict[str, Any]:
    """Counts, failure rate and requests/s of the samples sent in [since, until); with
    ``overlapping``, of those running at any moment of it (sent before but still in flight too)."""
    if overlapping:
        sel = [s for s in samples if (until is None or s.start < until)
               and (since is None or s.start + s.ms / 1000 >= since)]
    else:
        sel = [s for s in samples if (since is None or s.start >= since) and (until is None or s.start < until)]
    if not sel:
        return {"requests": 0, "failed": 0, "failure_rate": 0.0, "rps": 0.0, "statuses": {}}
    span = max((until or sel[-1].start) - (since if since is not None else sel[0].start), 1e-6)
    statuses: dict[str, int] = {}
    for s in sel:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    bad = sum(1 for s in sel if failed(s))
    lat = sorted(s.ms for s in sel)
    return {"requests": len(sel), "failed": bad, "failure_rate": round(bad / len(sel), 5),
            "failed_kinds": sorted({s.kind for s in sel if failed(s)}),
            "rps": round(len(sel) / span, 1), "statuses": statuses,
            "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}


def in_flight(samples: list[Sample], at: float) -> dict[str, Any]:
    """The requests running at the moment ``at`` (sent before, answered after): those on the
    killed instance that no proxy may retry (a token exchange) fail."""
    sel = [s for s in samples if s.start < at <= s.start + s.ms / 1000]
    return {"requests": len(sel), "failed": sum(1 for s in sel if failed(s)),
            "failed_kinds": sorted({s.kind for s in sel if failed(s)})}


def missing_acknowledged(engine: Any, samples: list[Sample], since_time: str) -> dict[str, int]:
    """What the bridge acknowledged but its audit trail lacks: intake events answered 202
    (``intake``; must be 0: the answer comes after the commit) and token exchanges answered 200
    whose ``token.exchanged`` event is absent (``exchanges``; the token service queues these
    events and appends them in batches, see bridge/tokens/auditing.py).  ``since_time``: the
    ISO time the load started (the trail's ``time`` column is ISO-8601 text)."""
    from sqlalchemy import select

    from bridge.store.models import AuditEventRow

    intake = {s.ref for s in samples if s.kind == "ingest" and s.status == 202 and s.ref}
    issued = {s.ref for s in samples if s.kind == "token" and s.status == 200 and s.ref}
    with engine.connect() as conn:
        found_ids = set(conn.execute(select(AuditEventRow.event_id).where(
            AuditEventRow.correlation_id.is_not(None), AuditEventRow.time >= since_time)).scalars())
        bodies = conn.execute(select(AuditEventRow.body).where(
            AuditEventRow.type == "token.exchanged", AuditEventRow.time >= since_time)).scalars()
        seen_jti = {v for body in bodies for v in _strings(json.loads(body))} & issued
    return {"intake": len(intake - found_ids), "exchanges": len(issued - seen_jti),
            "intake_acknowledged": len(intake), "exchanges_acknowledged": len(issued)}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
