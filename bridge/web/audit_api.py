"""The auditor's API over the audit trail, and the ingest endpoint of the Orthanc plugin.

``GET /audit/events``: records filtered by ``user`` (``sub@iss`` or username), ``patient``,
``study``, ``share`` (a share id: the events naming that share, by default of the ``share.*`` types
and access.denied), ``type`` (repeatable or comma-separated), ``since``/``until`` (ISO 8601, UTC if no
zone), as ``format=json`` (default) or ``csv``, ``limit`` records per page (default 100, at most
1000) after the ``after`` seq; the JSON answer carries ``next`` (the URL of the next page), both
answers a ``Link: <...>; rel="next"`` header.  Only for a PACS token carrying the ``audit-logs``
permission, checked by the very verifier the PACS uses (bridge/core/verifier.py: signature,
claims, MFA rule, revocation) and the one permission vocabulary (bridge/core/permissions.py).
Errors follow RFC 6750: 401 + ``WWW-Authenticate: Bearer`` without or with a bad token, 403
``insufficient_scope`` without the permission (that refusal is audited as access.denied).
Every answered query is itself recorded (110101 Audit Log Used) *before* the answer is sent.

``POST /audit/events``: the Orthanc plugin ships its coalesced events here
(bridge/pacs/audit_shipper.py) as ``{"events": [AuditEvent.to_dict(), ...]}`` with the bearer
secret ``audit.ingest_token``.  What the plugin records comes largely from others (a PatientID
is whatever an uploader wrote), so an event is never refused for its values: the event model
normalises them and says so in ``details.normalised`` (bridge/core/audit_events.py).  What is refused
is what the plugin never sends: an event type other than the PACS access types
(:data:`bridge.core.audit_codes.PACS_INGEST_TYPES`) or an item that is not an event at all.  Such an
item is not silently dropped but recorded as ``audit.input_rejected`` (naming the field) and listed
in the answer's ``rejected``; the rest of the batch is kept, and the answer is still 202, so the
plugin does not re-send (and re-spool) the batch for ever.  Event times are clamped to a window
around the bridge's clock (:func:`bridge.core.audit_events.clamp_time`).  Events are de-duplicated by
``event_id`` (the plugin re-sends a batch whose answer it did not see) and appended in one
transaction.
"""

from __future__ import annotations

import datetime as dt
import hmac
import io
import json
import uuid
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bridge.audit.export import export_csv, export_rows
from bridge.audit.store import AuditStore, object_ids
from bridge.config import Settings
from bridge.core import audit_events as ev
from bridge.core.audit_codes import PACS_INGEST_TYPES, AuditEventType, ObjectKind, Outcome
from bridge.core.errors import VerificationError
from bridge.core.permissions import Permission
from bridge.core.verifier import bearer_token
from bridge.errors import www_authenticate
from bridge.store.models import AuditEventRow
from bridge.web.client import client_address
from bridge.web.errors import oauth_error_response
from bridge.web.limits import limit

bp = Blueprint("audit_api", __name__)
STORE = "pacs_bridge_audit_store"
REALM = "pacs-bridge-audit"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_INGEST = 1000
#: the largest ``after`` (a seq is a signed 64-bit integer in the database)
MAX_SEQ = 2**63 - 1
API_CLIENT = "pacs-bridge-audit-api"
#: UUID v5 namespace of the records of refused ingest items (fixed: a re-sent item maps to one id)
REJECTION_NAMESPACE = uuid.UUID("8a1d2f3c-5b6e-4f70-8192-a3b4c5d6e7f8")


def audit_store(app: Flask) -> AuditStore:
    """The app's one audit store (built by the app's composition root on first use, or injected)."""
    store = app.extensions.get(STORE)
    if store is None:
        from bridge.services import of_app

        store = app.extensions[STORE] = of_app(app).audit_store
    return store  # type: ignore[no-any-return]


def init_app(app: Flask, settings: Settings, store: AuditStore | None = None) -> None:
    if store is not None:
        app.extensions[STORE] = store
    ingest = settings.audit.ingest_token
    app.config["PACS_BRIDGE_AUDIT_INGEST_TOKEN"] = ingest.get_secret_value() if ingest else None
    app.register_blueprint(bp)


class ApiError(Exception):
    def __init__(self, status: int, error: str, description: str, **challenge: str):
        super().__init__(description)
        self.status, self.error, self.description, self.challenge = status, error, description, challenge


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    www = None
    if exc.status in (401, 403):
        coded = exc.error != "unauthorized"  # RFC 6750 3.1: no error code when no credentials came
        www = www_authenticate(realm=REALM, error=exc.error if coded else None,
                               error_description=exc.description if coded else None, **exc.challenge)
    return oauth_error_response(exc.status, exc.error, exc.description, www_authenticate=www)


# ---------------------------------------------------------------------------- auditor access
def _token_service() -> Any:
    return current_app.extensions["pacs_bridge_tokens"]["service"]


def _auditor() -> dict[str, Any]:
    """Claims of a valid, unrevoked PACS token carrying ``audit-logs``; ApiError otherwise."""
    header = request.headers.get("Authorization")
    if not header:
        raise ApiError(401, "unauthorized", "a bearer token with the audit-logs permission is required")
    service = _token_service()
    try:
        verified = service.verifier.verify(bearer_token(header))
    except VerificationError as exc:
        status = 400 if exc.error == "invalid_request" else 401
        raise ApiError(status, exc.error, exc.reason) from None
    claims = verified.claims
    if service.is_revoked(claims):  # by jti or by the subject's logout watermark
        raise ApiError(401, "invalid_token", "token revoked")
    # the token's grants, as the PACS reads them (one holding audit-logs; the trail has no study scope,
    # like the PACS's own audit-logs routes, bridge.pacs.gate.SCOPE_FREE); top-level ``permissions`` is display
    if not any(Permission.AUDIT_LOGS.value in g.permissions for g in verified.grants):
        _record(AuditEventType.ACCESS_DENIED, claims, {"reason": "token lacks the audit-logs permission"},
                Outcome.MINOR_FAILURE)
        raise ApiError(403, "insufficient_scope", "the audit-logs permission is required",
                       scope=Permission.AUDIT_LOGS.value)
    return claims


def _actor(claims: dict[str, Any]) -> ev.Actor:
    sub = claims.get("sub")
    return ev.Actor(
        user_id=f"{sub}@{claims.get('iss')}" if sub else None,
        username=claims.get("preferred_username") if isinstance(claims.get("preferred_username"), str) else None,
        client_id=claims.get("client_id") if isinstance(claims.get("client_id"), str) else API_CLIENT,
        network_address=client_address(),
    )


def _record(kind: AuditEventType, claims: dict[str, Any], details: dict[str, Any],
            outcome: Outcome | None = None) -> None:
    objects = [ev.ParticipantObject(ObjectKind.AUDIT_LOG, "audit_events", "GET /audit/events")]
    if isinstance(claims.get("jti"), str):
        objects.append(ev.token(claims["jti"]))
    audit_store(current_app).append(ev.AuditEvent(
        kind, outcome, actor=_actor(claims), objects=tuple(objects),
        correlation_id=request.headers.get("X-Request-ID") or None, details=details))


def _time(name: str) -> dt.datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        # compared in UTC: a time at the calendar's edge whose UTC value does not exist is refused here
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_request", f"{name}: not an ISO 8601 date/time in range: {value!r}") from None


def _int(name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = request.args.get(name)
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name}: not an integer: {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise ApiError(400, "invalid_request", f"{name}: must be between {lo} and {hi or 'any'}")
    return n


def _one(name: str) -> str | None:
    """A parameter that must not be repeated (which of two share ids would the auditor mean?)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "invalid_request", f"{name}: give it once")
    return values[0] if values and values[0] else None


#: what ``share=`` searches when no ``type`` is given: every event a share's life writes
SHARE_TYPES = [t.value for t in AuditEventType if t.value.startswith("share.")] + [AuditEventType.ACCESS_DENIED.value]
#: rows read per step while filtering by share (the share is a participant object, not a column)
SHARE_SCAN = 1000


def _query(store: AuditStore, f: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """``limit`` + 1 matching records (one more tells whether there is a next page).  With ``share``
    the records of the other filters are read in steps and kept when one of their participant
    objects is that share (the store's indexed columns hold patient and study, not shares)."""
    share = f.pop("share")
    if not share:
        return store.query(**f, limit=limit + 1)
    f["types"] = f["types"] or SHARE_TYPES
    after = f.pop("after_seq")
    out: list[dict[str, Any]] = []
    while len(out) <= limit:
        rows = store.query(**f, after_seq=after, limit=SHARE_SCAN)
        out += [r for r in rows if share in object_ids(r, ObjectKind.SHARE)]
        if len(rows) < SHARE_SCAN:
            break
        after = rows[-1]["seq"]
    return out[:limit + 1]


def _filters() -> dict[str, Any]:
    types: list[str] = []
    for raw in request.args.getlist("type"):
        types += [t.strip() for t in raw.split(",") if t.strip()]
    for t in types:
        try:
            AuditEventType(t)
        except ValueError:
            raise ApiError(400, "invalid_request", f"type: unknown event type {t!r}") from None
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "invalid_request", f"format: must be json or csv, not {fmt!r}")
    return {
        "user": request.args.get("user") or None,
        "patient": request.args.get("patient") or None,
        "study": request.args.get("study") or None,
        "share": _one("share"),
        "types": types or None,
        "since": _time("since"),
        "until": _time("until"),
        "limit": _int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        "after_seq": _int("after", None, 0, MAX_SEQ),
        "format": fmt,
    }


@bp.get("/audit/events")
@limit("audit")
def query_events() -> Response:
    claims = _auditor()
    f = _filters()
    fmt, limit = f.pop("format"), f.pop("limit")
    rows = _query(audit_store(current_app), dict(f), limit)
    more = len(rows) > limit
    rows = rows[:limit]
    next_url = None
    if more:
        args = request.args.to_dict(flat=False)
        args["after"] = [str(rows[-1]["seq"])]
        # the configured public URL, never the request's Host: the client follows this link with its token
        public = current_app.config["BRIDGE_SETTINGS"].bridge.public_url.rstrip("/")
        next_url = f"{public}/audit/events?{urlencode(args, doseq=True)}"
    shown = {k: (ev.format_time(v) if isinstance(v, dt.datetime) else v) for k, v in f.items() if v}
    _record(AuditEventType.AUDIT_LOG_USED, claims,
            {"query": shown, "format": fmt, "records": len(rows), "first_seq": rows[0]["seq"] if rows else None})
    if fmt == "csv":
        out = io.StringIO()
        export_csv(rows, out)
        resp = Response(out.getvalue(), mimetype="text/csv")
        resp.headers["Content-Disposition"] = 'attachment; filename="audit-events.csv"'
    else:
        resp = Response(json.dumps({"events": list(export_rows(rows)), "next": next_url},
                                   ensure_ascii=False), mimetype="application/json")
    if next_url:
        resp.headers["Link"] = f'<{next_url}>; rel="next"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---------------------------------------------------------------------------- ingest (Orthanc plugin)
@bp.post("/audit/events")
@limit("audit")
def ingest_events() -> Response:
    expected = current_app.config.get("PACS_BRIDGE_AUDIT_INGEST_TOKEN")
    if not expected:
        raise ApiError(404, "not_found", "audit ingest is not enabled (audit.ingest_token)")
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected.encode()):
        _token_service().audit(AuditEventType.ACCESS_DENIED, {  # the sink adds the client address
            "client_id": "pacs-plugin", "endpoint": "POST /audit/events",
            "reason": "wrong ingest secret" if header else "no ingest secret"})
        raise ApiError(401, "invalid_token" if header else "unauthorized", "the ingest secret is required")
    body = request.get_json(silent=True)
    items = body.get("events") if isinstance(body, dict) else None
    if not isinstance(items, list) or len(items) > MAX_INGEST:
        raise ApiError(400, "invalid_request", f"body: expected {{\"events\": [...]}} with at most {MAX_INGEST}")
    now = ev.utcnow()
    events: list[ev.AuditEvent] = []
    rejected: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        field, error = _unacceptable(i, item)
        if field is None:
            try:
                events.append(ev.clamp_time(ev.AuditEvent.from_dict(item), now))
                continue
            except Exception as exc:  # recorded below, never dropped
                field, error = f"events[{i}]", f"not usable: {type(exc).__name__}: {exc}"
        rejection = _rejection(i, item, field, error)
        rejected.append({"index": i, "field": field, "error": rejection.details["error"]})
        events.append(rejection)
    store = audit_store(current_app)
    fresh = _store_new(store, events)
    accepted = sum(1 for e in fresh if e.type != AuditEventType.AUDIT_INPUT_REJECTED)
    resp = Response(json.dumps({"accepted": accepted, "duplicates": len(events) - len(fresh),
                                "rejected": rejected}), status=202, mimetype="application/json")
    return resp


def _unacceptable(i: int, item: Any) -> tuple[str | None, str]:
    """(field, error) when ``item`` is not an event the plugin may send; (None, "") otherwise."""
    if not isinstance(item, dict):
        return f"events[{i}]", f"not a JSON object but {type(item).__name__}"
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in PACS_INGEST_TYPES:
        return (f"events[{i}].type", f"{ev.normalise_text(kind, limit=64)!r} is not a PACS access event type "
                f"({', '.join(sorted(PACS_INGEST_TYPES))})")
    return None, ""


def _rejection(i: int, item: Any, field: str, error: str) -> ev.AuditEvent:
    """The record of an item that was not accepted: which field, why, and the item itself (made
    safe by the event model).  Its id derives from the item, so a re-sent batch records it once."""
    event_id = item.get("event_id") if isinstance(item, dict) else None
    return ev.AuditEvent(
        AuditEventType.AUDIT_INPUT_REJECTED, Outcome.MINOR_FAILURE,
        actor=ev.Actor(client_id="pacs-plugin", network_address=client_address(), is_requestor=True),
        objects=(ev.ParticipantObject(ObjectKind.AUDIT_LOG, "audit_events", "POST /audit/events"),),
        details={"source": "pacs-ingest", "field": field, "error": error, "index": i,
                 "claimed_event_id": event_id, "item": item},
        description=f"PACS audit ingest: {field} refused",
        event_id=str(uuid.uuid5(REJECTION_NAMESPACE, json.dumps(item, sort_keys=True, default=str))),
    )


def _store_new(store: AuditStore, events: list[ev.AuditEvent], attempts: int = 3) -> list[ev.AuditEvent]:
    """Append the events not stored yet; the ones appended.  Another instance may store the same
    batch between our check and our insert (HAProxy retries the intake elsewhere while the first
    instance still writes; the plugin re-sends): the unique ``event_id`` refuses our insert, the
    transaction rolls back, and the check runs again (appends are serialised on the chain head,
    so the other instance's rows are visible by then)."""
    for attempt in range(attempts):
        fresh = _new_only(store, events)
        try:
            store.append_many(fresh)
            return fresh
        except Exception as exc:
            # the store's hot path uses the DB-API cursor: its driver's IntegrityError, not SQLAlchemy's
            duplicate = (IntegrityError, store.engine.dialect.dbapi.IntegrityError)
            if not isinstance(exc, duplicate) or attempt == attempts - 1:
                raise
    return []  # pragma: no cover - the loop returns or raises


def _new_only(store: AuditStore, events: list[ev.AuditEvent]) -> list[ev.AuditEvent]:
    """Drop events already stored (a re-sent batch) and repeats within the batch."""
    ids = [e.event_id for e in events]
    with store.engine.connect() as conn:
        known = set(conn.execute(select(AuditEventRow.event_id).where(AuditEventRow.event_id.in_(ids))).scalars())
    out = []
    for e in events:
        if e.event_id not in known:
            known.add(e.event_id)
            out.append(e)
    return out
