"""The sharers' API (docs/sharing.md, "Endpoints"): create, list, read, revoke a share, and issue a
new passcode for an external one.

``POST /shares`` (JSON), ``GET /shares``, ``GET /shares/<id>``, ``DELETE /shares/<id>``,
``POST /shares/<id>/passcode``.  The caller is a person with a PACS token: ``Authorization: Bearer``
(checked by the very verifier the PACS uses: signature, claims, MFA rule, revocation), or the
gateway's session cookie (its PACS token, read from the session; a state-changing request then
must come from the bridge's own origin, as for the gateway).  What the caller may share is decided
by :mod:`bridge.sharing.service` from that token's grants.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from bridge.config import Settings
from bridge.core.audit_codes import AuditEventType
from bridge.core.errors import VerificationError
from bridge.core.verifier import bearer_token
from bridge.errors import www_authenticate
from bridge.sharing.service import ShareError, Sharer, ShareService
from bridge.web.client import client_address
from bridge.web.errors import oauth_error_response
from bridge.web.limits import limit

bp = Blueprint("shares", __name__)
EXTENSION = "pacs_bridge_shares"
REALM = "pacs-bridge-shares"


def init_app(app: Flask, settings: Settings, service: ShareService | None = None) -> None:
    """Register; ``service`` None: the app's composition root builds it on first use."""
    app.extensions[EXTENSION] = service
    app.register_blueprint(bp)


def share_service(extension: str = EXTENSION) -> ShareService:
    """The app's share service: the one given to ``init_app`` (tests), else the composition
    root's, built on first use (the sharers' API and the recipients' endpoint each keep theirs
    under their own extension key)."""
    found = current_app.extensions.get(extension)
    if found is None:
        from bridge.services import of_app

        found = current_app.extensions[extension] = of_app(current_app).shares
    return found  # type: ignore[no-any-return]


_service = share_service


@bp.errorhandler(ShareError)
def _error(exc: ShareError) -> Response:
    www = None
    if exc.status == 401:
        www = www_authenticate(realm=REALM, error=exc.error if exc.error != "unauthorized" else None,
                               error_description=exc.description if exc.error != "unauthorized" else None)
    return oauth_error_response(exc.status, exc.error, exc.description, www_authenticate=www)


def _token_service() -> Any:
    return current_app.extensions["pacs_bridge_tokens"]["service"]


def _gateway_token() -> str | None:
    """The PACS token of the caller's gateway session, if the gateway runs and the cookie names one."""
    from bridge.web.gateway import views

    gw = current_app.extensions.get(views.EXTENSION)
    if gw is None:
        return None
    login = gw.store.get(request.cookies.get(views.COOKIE))
    if login is None:
        return None
    if request.method not in ("GET", "HEAD"):
        from bridge.web.gateway import rules

        ok, why = rules.same_origin(request.method, request.headers, gw.public_origin)
        if not ok:
            raise ShareError(403, "access_denied", f"cross-site request refused: {why}")
    return str(login.tokens.pacs_token)


def _sharer() -> Sharer:
    """The caller, from one bearer token or the gateway session; ShareError 401 otherwise."""
    headers = request.headers.getlist("Authorization")
    if len(headers) > 1 or (headers and "," in headers[0]):  # a repeated header arrives joined by a comma
        raise ShareError(400, "invalid_request", "one Authorization header, please")
    try:
        token = bearer_token(headers[0]) if headers else _gateway_token()
    except VerificationError as exc:
        raise ShareError(401, exc.error or "invalid_token", exc.reason) from None
    if not token:
        raise ShareError(401, "unauthorized", "a PACS bearer token or a gateway session is required")
    service = _token_service()
    try:
        verified = service.verifier.verify(token)
    except VerificationError as exc:
        service.audit(AuditEventType.ACCESS_DENIED, {"client_id": "pacs-bridge-shares", "endpoint": "shares",
                                                     "reason": f"share API: {exc.reason}"})
        raise ShareError(401, "invalid_token", "the token is not valid (log in again)") from None
    if service.is_revoked(verified.claims):
        raise ShareError(401, "invalid_token", "token revoked")
    return Sharer.from_claims(verified.claims, verified.grants, token, client_address())


def _json(body: Any, status: int = 200) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/shares")
@limit("token")
def create() -> Response:
    sharer = _sharer()
    if not (request.mimetype or "").endswith("json"):
        raise ShareError(415, "invalid_request", "Content-Type: application/json required")
    body = request.get_json(silent=True)
    out = _service().create(sharer, body if isinstance(body, dict) else None)  # type: ignore[arg-type]
    return _json(out, 201)


@bp.get("/shares")
def mine() -> Response:
    return _json({"shares": _service().mine(_sharer())})


@bp.get("/shares/<share_id>")
def one(share_id: str) -> Response:
    return _json(_service().one(_sharer(), share_id))


@bp.delete("/shares/<share_id>")
def revoke(share_id: str) -> Response:
    return _json(_service().revoke(_sharer(), share_id))


@bp.post("/shares/<share_id>/passcode")
@limit("token")
def passcode(share_id: str) -> Response:
    return _json(_service().renew_passcode(_sharer(), share_id))
