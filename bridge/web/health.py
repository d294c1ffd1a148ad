"""Health for load balancers, and the answer a request gets while the database is unreachable.

``GET /readyz``: 200 when this instance can serve, i.e. its database answers ``SELECT 1``; 503
otherwise.  HAProxy (the dev stack's, and a site's) checks it every few hundred milliseconds and
sends no request to an instance that is not ready.  It says nothing else (no version, no host,
no driver error): the endpoint is unauthenticated.

Any request that hits a database connection error (PostgreSQL restarting, a failover) answers
503 ``temporarily_unavailable`` with ``Retry-After`` instead of a 500: the client may retry, and
a transaction that failed was rolled back, so nothing was half-written.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from bridge.web.errors import oauth_error_response

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)
#: seconds a client should wait before retrying while the database is away
RETRY_AFTER = 2


def _json(body: dict[str, Any], status: int = 200) -> Response:
    resp = Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _ping(app: Flask) -> None:
    from bridge.web.audit_api import audit_store

    with audit_store(app).engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@bp.get("/readyz")
def readyz() -> Response:
    try:
        _ping(current_app)  # type: ignore[arg-type]
    except Exception:
        log.warning("readiness: the database does not answer", exc_info=True)
        return _json({"status": "database unavailable"}, 503)
    return _json({"status": "ready"})


def _database_unavailable(exc: Exception) -> Response:
    log.error("database unavailable during a request: %s", type(exc).__name__, exc_info=True)
    return oauth_error_response(503, "temporarily_unavailable", "the bridge's database is unavailable; retry later",
                                retry_after=RETRY_AFTER)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    for exc in (OperationalError, InterfaceError):
        app.register_error_handler(exc, _database_unavailable)
