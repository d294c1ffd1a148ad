"""HTTP endpoints of the PACS token service (Flask glue around :mod:`bridge.tokens.oauth`).

``/.well-known/oauth-authorization-server`` (RFC 8414), ``/jwks.json``, ``/token`` (RFC 8693),
``/introspect`` (RFC 7662), ``/revoke`` (RFC 7009) and ``/revocations`` (the list verifiers pull).
Every answer carrying a token or token data is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from flask import Blueprint, Flask, Response, current_app

from bridge.config import Settings
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.tokens.claims import TokenSettings
from bridge.tokens.oauth import (
    BridgeClient,
    PacsIntrospectionEndpoint,
    PacsRevocationEndpoint,
    PacsTokenGenerator,
    TokenExchangeGrant,
    metadata,
)
from bridge.tokens.roles import role_permissions
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator, TokenService, https_fetch
from bridge.web.limits import limit

bp = Blueprint("tokens", __name__)
EXTENSION = "pacs_bridge_tokens"


def build_service(settings: Settings, audit_store: Any | None = None) -> TokenService:
    """The token service over the bridge's database, Keycloak and policy, as configured; its events
    go to ``audit_store`` (the app's, see bridge/web/audit_api.py) or one opened here."""
    from bridge.audit.store import open_store
    from bridge.oidc.state import SqlEndedSessions
    from bridge.store.db import engine as make_engine
    from bridge.store.db import one_connection
    from bridge.tokens.auditing import BufferedAuditSink
    from bridge.tokens.store import SqlAssignmentSource, SqlRevocationStore, key_ring

    # one connection pool per worker: the audit store already opened the same database
    eng = audit_store.engine if audit_store is not None else make_engine(settings.store.url)
    kc = settings.keycloak
    issuer = settings.tokens.issuer or settings.bridge.public_url
    validator = KeycloakTokenValidator(
        KeycloakSettings(
            issuer=f"{kc.url}/realms/{kc.realm}",
            audience=settings.tokens.subject_token_audience or kc.client_id,
            allowed_clients=frozenset(settings.tokens.subject_token_clients),
        ),
        https_fetch(str(kc.ca_file) if kc.ca_file else None),
    )
    # the journal keeps answered exchanges' events through a crash of the worker (auditing.py)
    audit = BufferedAuditSink(audit_store or open_store(settings, eng), issuer,
                              journal_dir=Path(settings.audit.spool_dir) / "token-journal")
    ring = key_ring(settings, eng)
    ring.on_unusable = lambda kid, why: audit(
        AuditEventType.ACCESS_DENIED,
        {"client_id": "key-ring", "kid": kid, "reason": f"signing key withheld from the JWKS: {why}"},
    )
    return TokenService(
        ring=ring,
        settings=TokenSettings(
            issuer=issuer,
            audience=settings.pacs.audience,
            lifetime_seconds=settings.tokens.lifetime_seconds,
            max_lifetime_seconds=settings.tokens.max_lifetime_seconds,
        ),
        mfa_rule=mfa.MfaRule.from_section(settings.mfa),
        keycloak=validator,
        assignments=SqlAssignmentSource(eng),  # read at every issue: a removed role must not linger
        revocations=SqlRevocationStore(eng),
        ended_sessions=SqlEndedSessions(eng, ttl_seconds=max(24 * 3600, settings.bridge.session_absolute_hours * 3600)),
        read_scope=lambda: one_connection(eng),
        role_permissions=role_permissions(settings.sync.policy_file),
        audit=audit,
    )


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
        from bridge.web.audit_api import audit_store

        service = build_service(settings, audit_store(app))
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
    return resp


@bp.post("/revoke")
@limit("revoke")
def revoke() -> Any:
    resp = _ext()["server"].create_endpoint_response(PacsRevocationEndpoint.ENDPOINT_NAME)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/revocations")
@limit("revocations")
def revocations() -> Response:
    return _json(_ext()["service"].revocation_list())
