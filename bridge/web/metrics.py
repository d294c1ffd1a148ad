"""``GET /metrics`` of the web app: Prometheus text, one answer for all the web server's workers.

Each worker is its own process with its own counters, and a scrape reaches one worker at
random; prometheus-client's multiprocess mode has every worker write its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and the scraped worker sums them all (``MultiProcessCollector``).
The directory is emptied when the server starts (:mod:`bridge.deploy.web_server`); the bridge
has no live gauges, so a worker that dies leaves nothing reported as current.  Without the
variable (the Flask test client, one process) the process's own registry is served.

Who may scrape (``web.metrics``): a client address (:func:`bridge.web.client.client_address`, so
after the trusted proxy hops) inside ``allow`` -- loopback by default -- or a request with
``Authorization: Bearer <web.metrics.bearer_token>``.  Everybody else gets 403, and the refusal is
audited: request counts and latencies tell an outsider which endpoints are used, and when.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from bridge.config import MetricsSection
from bridge.core.audit_codes import AuditEventType
from bridge.deploy.web_server import MULTIPROC_ENV
from bridge.web.client import client_address
from bridge.web.limits import limit

bp = Blueprint("metrics", __name__)
EXTENSION = "pacs_bridge_metrics"
#: app extension: collectors asked at each scrape (values read from the database, the same for
#: every worker, so not worker-local counters: e.g. open break-glass reviews)
COLLECTORS = "pacs_bridge_metrics_collectors"

#: label values are Flask endpoint names (a fixed set), never raw paths: a scan of random URLs
#: must not create one time series per URL
REQUESTS = Counter("pacs_bridge_http_requests_total", "HTTP requests answered by the bridge's web app",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("pacs_bridge_http_request_duration_seconds", "Time to answer, by endpoint", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def init_app(app: Flask, section: MetricsSection) -> None:
    """Count every request; serve ``/metrics`` when ``web.metrics.enabled``."""
    app.before_request(_start_timer)
    app.after_request(_observe)
    if not section.enabled:
        return
    token = section.bearer_token.get_secret_value() if section.bearer_token else None
    app.extensions[EXTENSION] = {
        "allow": tuple(ipaddress.ip_network(n) for n in section.allow),
        "token": token.encode() if token else None,
    }
    app.register_blueprint(bp)


def add_collector(app: Flask, collector: Any) -> None:
    """Report ``collector`` (a prometheus-client custom collector: ``collect()`` yields metric
    families) at every scrape, besides the request counters."""
    app.extensions.setdefault(COLLECTORS, []).append(collector)


def _start_timer() -> None:
    g.pacs_bridge_t0 = time.perf_counter()


def _observe(resp: Response) -> Response:
    t0 = g.get("pacs_bridge_t0")
    record(request.endpoint or "unmatched", request.method, resp.status_code,
           None if t0 is None else time.perf_counter() - t0)
    return resp


def record(endpoint: str, method: str, status: int, seconds: float | None) -> None:
    """Count one answered request (also for requests served outside Flask: the gateway's fast path)."""
    REQUESTS.labels(endpoint, method if method in _METHODS else "other", str(status)).inc()
    if seconds is not None:
        LATENCY.labels(endpoint).observe(seconds)


def _refuse(reason: str) -> Response:
    """403, and an ACCESS_DENIED audit event (through the token service's sink, which adds the
    client address)."""
    tokens = current_app.extensions.get("pacs_bridge_tokens")
    if tokens is not None:
        tokens["service"].audit(AuditEventType.ACCESS_DENIED, {"client_id": "metrics", "reason": reason})
    resp = Response("forbidden\n", status=403, mimetype="text/plain")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _allowed() -> str | None:
    """None when the request may scrape; otherwise why not."""
    ext: dict[str, Any] = current_app.extensions[EXTENSION]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if ext["token"] is None:
            return "/metrics: a bearer token was presented but none is configured"
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), ext["token"]):
            return "/metrics: wrong bearer token"
        return None
    addr = client_address()
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "/metrics: no valid client address"
    if any(ip in net for net in ext["allow"]):
        return None
    return f"/metrics: client address {addr} is not in web.metrics.allow"


def registry() -> Any:
    """What a scrape reports: every live and dead worker's values in multiprocess mode, else this
    process's own registry."""
    if os.environ.get(MULTIPROC_ENV):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    from prometheus_client import REGISTRY

    return REGISTRY


@bp.get("/metrics")
@limit("metrics")
def metrics() -> Response:
    why = _allowed()
    if why is not None:
        return _refuse(why)
    body = generate_latest(registry())
    for collector in current_app.extensions.get(COLLECTORS, ()):
        extra = CollectorRegistry(auto_describe=False)
        extra.register(collector)
        body += generate_latest(extra)
    resp = Response(body, mimetype=CONTENT_TYPE_LATEST)
    resp.headers["Cache-Control"] = "no-store"
    return resp
