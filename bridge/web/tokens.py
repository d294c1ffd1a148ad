"""HTTP endpoints of the PACS token service (Flask glue around :mod:`bridge.tokens.oauth`).

``/.well-known/oauth-authorization-server`` (RFC 8414), ``/jwks.json``, ``/token`` (RFC 8693),
``/introspect`` (RFC 7662), ``/revoke`` (RFC 7009) and ``/revocations`` (the list verifiers pull).
Every answer carrying a token or token data is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from flask import Blueprint, Flask, Response, current_app, request

from bridge.config import Settings
from bridge.core.audit_codes import AuditEventType
from bridge.tokens.oauth import (
    BridgeClient,
    PacsIntrospectionEndpoint,
    PacsRevocationEndpoint,
    PacsTokenGenerator,
    TokenExchangeGrant,
    metadata,
)
from bridge.tokens.service import TokenService
from bridge.web.limits import limit

bp = Blueprint("tokens", __name__)
EXTENSION = "pacs_bridge_tokens"


def build_service(settings: Settings, audit_store: Any | None = None) -> TokenService:
    """The token service as configured (built by the composition root, bridge/services.py); its
    events go to ``audit_store`` (the app's, see bridge/web/audit_api.py) or one opened there."""
    from bridge.services import Services

    return Services(settings, audit_store=audit_store).token_service


def clients(settings: Settings) -> dict[str, BridgeClient]:
    return {
        c.client_id: BridgeClient(
            c.client_id,
            c.client_secret.get_secret_value() if c.client_secret else None,
            c.may_introspect,
            c.may_revoke_any,
        )
        for c in settings.tokens.clients
    }


def init_app(app: Flask, settings: Settings, service: TokenService | None = None) -> None:
    if service is None:
        from bridge.services import of_app
        from bridge.web.audit_api import audit_store

        services = of_app(app)
        services.adopt_audit_store(audit_store(app))  # an injected audit store: the tokens' events go there too
        service = services.token_service
    known = clients(settings)
    server = AuthorizationServer(app, query_client=known.get, save_token=lambda token, request: None)
    server.token_service = service  # read by TokenExchangeGrant
    server.register_grant(TokenExchangeGrant)
    server.register_token_generator(TokenExchangeGrant.GRANT_TYPE, PacsTokenGenerator(service))
    server.register_endpoint(PacsIntrospectionEndpoint(server, service))
    server.register_endpoint(PacsRevocationEndpoint(server, service))
    service.ring.active()  # a key exists before the first request
    app.extensions[EXTENSION] = {
        "server": server,
        "service": service,
        "base_url": (settings.bridge.public_url).rstrip("/"),
    }
    app.register_blueprint(bp)


def _ext() -> dict[str, Any]:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _json(body: Any, cache: str = "no-store") -> Response:
    resp = Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")
    resp.headers["Cache-Control"] = cache
    return resp


@bp.get("/.well-known/oauth-authorization-server")
def well_known() -> Response:
    ext = _ext()
    return _json(metadata(ext["service"], ext["base_url"]), cache="public, max-age=300")


@bp.get("/jwks.json")
def jwks() -> Response:
    return _json(_ext()["service"].ring.jwks(), cache="public, max-age=60")


@bp.post("/token")
@limit("token")
def token() -> Any:
    resp = _ext()["server"].create_token_response()
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


@bp.post("/introspect")
@limit("introspect")
def introspect() -> Any:
    resp = _ext()["server"].create_endpoint_response(PacsIntrospectionEndpoint.ENDPOINT_NAME)
    resp.headers["Cache-Control"] = "no-store"
    _audit_refused_client(resp, "introspect")
    return resp


@bp.post("/revoke")
@limit("revoke")
def revoke() -> Any:
    resp = _ext()["server"].create_endpoint_response(PacsRevocationEndpoint.ENDPOINT_NAME)
    resp.headers["Cache-Control"] = "no-store"
    _audit_refused_client(resp, "revoke")
    return resp


def _audit_refused_client(resp: Response, endpoint: str) -> None:
    """A refused client authentication (Authlib answers 401 ``invalid_client``) is an access
    decision like any other: audited with the client id that was tried, never the secret, so
    secret guessing on the introspection client shows in the trail (the rate limit slows it)."""
    if resp.status_code != 401:
        return
    auth = request.authorization
    tried = (auth.username if auth is not None and auth.type == "basic" else None) or request.form.get("client_id")
    _ext()["service"].audit(AuditEventType.ACCESS_DENIED, {
        "client_id": tried, "endpoint": endpoint, "reason": "client authentication failed"})


@bp.get("/revocations")
@limit("revocations")
def revocations() -> Response:
    return _json(_ext()["service"].revocation_list())
