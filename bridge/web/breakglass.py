"""Break-glass over HTTP for non-browser clients, and the ``/metrics`` count of open reviews.

``POST /break-glass``  a viewer asks for emergency access: ``Authorization: Bearer <Keycloak access
                       token>`` (the one it exchanges at ``/token``; its login must be multi-factor
                       and at most ``break_glass.fresh_auth_seconds`` old), JSON body
                       ``{"target_kind": "study"|"patient", "target": UID or PatientID, "reason":
                       "...", "purpose_of_use": "BTG"}``.  201 with the grant; the viewer's next
                       exchange at ``/token`` carries it (and may ask for ``purpose_of_use=BTG``).
``GET  /break-glass/reviews``       the review queue (a PACS token holding ``audit-logs``)
``POST /break-glass/reviews/<id>``  close an item: ``{"verdict": "justified"|"not-justified",
                       "comment": "..."}``; never by the requester.

Browsers use the gateway's pages instead (bridge/web/gateway/breakglass.py), which ask Keycloak
for a new login (``prompt=login``, ``max_age=0``) before the grant.  The decisions are the
service's (:mod:`bridge.breakglass.service`); this module only authenticates and parses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client.core import GaugeMetricFamily

from bridge.breakglass.service import (
    OPEN,
    REVIEW_PERMISSION,
    VERDICTS,
    BreakGlass,
    BreakGlassRefused,
    Target,
    check_reason,
)
from bridge.core import grants as grants_mod
from bridge.core.errors import VerificationError
from bridge.core.verifier import bearer_token
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import Subject
from bridge.tokens.service import KeycloakUnavailable, TokenService
from bridge.web import metrics
from bridge.web.client import client_address
from bridge.web.errors import oauth_error_response
from bridge.web.limits import hit_for, limit

bp = Blueprint("break_glass", __name__)
EXTENSION = "pacs_bridge_break_glass"
#: the fields of a request body and of a review, exactly (a misspelt or extra field is refused)
REQUEST_FIELDS = frozenset({"target_kind", "target", "reason", "purpose_of_use"})
REVIEW_FIELDS = frozenset({"verdict", "comment"})
STATES = (OPEN, *VERDICTS, "all")


def init_app(app: Flask, provide: Callable[[], BreakGlass]) -> None:
    """Register the endpoints; ``provide`` builds the service on first use (the composition root's
    :attr:`bridge.services.Services.break_glass`: no database is opened at app creation)."""
    app.extensions[EXTENSION] = provide
    metrics.add_collector(app, OpenReviews(provide))
    app.register_blueprint(bp)


def service() -> BreakGlass:
    return current_app.extensions[EXTENSION]()  # type: ignore[no-any-return]


def _tokens() -> TokenService:
    return current_app.extensions["pacs_bridge_tokens"]["service"]  # type: ignore[no-any-return]


class OpenReviews:
    """``pacs_bridge_break_glass_open_reviews``: requests nobody has reviewed yet (from the database
    at each scrape, so every worker reports the same number)."""

    def __init__(self, provide: Callable[[], BreakGlass]):
        self.provide = provide

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            count = self.provide().open_count()
        except Exception:  # the database is down: /readyz says so; the scrape still answers
            return
        family = GaugeMetricFamily("pacs_bridge_break_glass_open_reviews",
                                   "Break-glass (emergency access) requests waiting for their post-hoc review")
        family.add_metric([], count)
        yield family


def strict_fields(data: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """``data`` with exactly the ``allowed`` keys, each once (JSON objects have one value per key;
    a form's repeated field is refused before it gets here); BreakGlassRefused(400) naming the field."""
    if not isinstance(data, Mapping):
        raise BreakGlassRefused("the body must be a JSON object", 400)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise BreakGlassRefused(f"{unknown[0][:40]}: unknown field (expected: {', '.join(sorted(allowed))})", 400)
    missing = sorted(allowed - set(data))
    if missing:
        raise BreakGlassRefused(f"{missing[0]}: required", 400)
    return dict(data)


def _error(exc: BreakGlassRefused) -> Response:
    code = {400: "invalid_request", 401: "insufficient_user_authentication", 404: "not_found",
            409: "conflict", 429: "slow_down"}.get(exc.status, "access_denied")
    return oauth_error_response(exc.status, code, exc.message)


def _keycloak_subject() -> tuple[Subject, dict[str, Any]]:
    """The requester of an API call: a valid, not logged-out Keycloak access token."""
    tokens = _tokens()
    headers = request.headers.getlist("Authorization")
    if len(headers) != 1 or tokens.keycloak is None:
        raise BreakGlassRefused("one Authorization: Bearer <Keycloak access token> header is required", 401)
    try:
        kc = tokens.keycloak.validate(bearer_token(headers[0]))
    except KeycloakUnavailable:
        raise BreakGlassRefused("the identity provider is unreachable; retry shortly", 503) from None
    except VerificationError as exc:
        raise BreakGlassRefused(f"the bearer token is not acceptable ({exc.reason})", 401) from None
    subject, _ = claims_mod.subject_from_keycloak(kc)
    if tokens.logged_out(kc, subject) is not None:
        raise BreakGlassRefused("the bearer token's session has ended", 401)
    return subject, kc


def _reviewer() -> tuple[Subject, frozenset[str]]:
    """The reviewer of an API call: a valid, unrevoked PACS token of ours, and its permissions."""
    tokens = _tokens()
    headers = request.headers.getlist("Authorization")
    if len(headers) != 1:
        raise BreakGlassRefused("one Authorization: Bearer <PACS token> header is required", 401)
    try:
        verified = tokens.verifier.verify(bearer_token(headers[0]))
    except VerificationError as exc:
        raise BreakGlassRefused(f"the bearer token is not acceptable ({exc.reason})", 401) from None
    if tokens.is_revoked(verified.claims):
        raise BreakGlassRefused("the bearer token was revoked", 401)
    claims = verified.claims
    name = claims.get("preferred_username")
    return (Subject(str(claims["sub"]), name if isinstance(name, str) else None),
            # only grants that hold everywhere count: closing any emergency item is not a right a
            # department-scoped audit-logs role (or a share, a break-glass grant) may lend
            grants_mod.permissions_of(g for g in verified.grants if g.unrestricted))


@bp.post("/break-glass")
@limit("login")
def request_access() -> Response:
    try:
        subject, kc = _keycloak_subject()
        if not hit_for("break_glass", subject.id):
            service()._denied(subject, None, "too many break-glass requests (rate limit per user)",
                              str(kc.get("azp") or "api"), client_address())
            raise BreakGlassRefused("too many break-glass requests; wait, or call the PACS team", 429)
        body = strict_fields(request.get_json(silent=True), REQUEST_FIELDS)
        target = Target.parse(body["target_kind"], body["target"])
        item = service().request(subject, kc, target, check_reason(body["reason"]),
                                 purpose_of_use=body["purpose_of_use"], client_id=str(kc.get("azp") or "api"),
                                 network_address=client_address())
    except BreakGlassRefused as exc:
        return _error(exc)
    resp = jsonify(item.to_json())
    resp.status_code = 201
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/break-glass/reviews")
@limit("audit")
def list_reviews() -> Response:
    try:
        reviewer, permissions = _reviewer()
        if REVIEW_PERMISSION not in permissions:
            service()._denied(reviewer, None, f"the review queue needs {REVIEW_PERMISSION}", "break-glass-review",
                              client_address())
            raise BreakGlassRefused(f"the review queue needs the {REVIEW_PERMISSION} permission")
        state = request.args.get("state", OPEN)
        if len(request.args.getlist("state")) > 1 or state not in STATES:
            raise BreakGlassRefused(f"state: one of {', '.join(STATES)}", 400)
        items = service().items(None if state == "all" else state)
        count = service().open_count()
    except BreakGlassRefused as exc:
        return _error(exc)
    resp = jsonify({"open": count, "items": [i.to_json() for i in items]})
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/break-glass/reviews/<item_id>")
@limit("audit")
def close_review(item_id: str) -> Response:
    try:
        reviewer, permissions = _reviewer()
        body = strict_fields(request.get_json(silent=True), REVIEW_FIELDS)
        item = service().close(item_id, reviewer, permissions, body["verdict"], body["comment"],
                               network_address=client_address())
    except BreakGlassRefused as exc:
        return _error(exc)
    resp = jsonify(item.to_json())
    resp.headers["Cache-Control"] = "no-store"
    return resp
