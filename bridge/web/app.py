"""The Flask app factory: the only way to get the bridge's web application.

Nothing happens at import time; tests build one app per test with their own settings.  Each
concern registers its blueprint here; the rate limiter is built last, over every marked endpoint.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request

from bridge.config import Settings
from bridge.web import client, limits, metrics

#: the largest request body the app reads (Flask's MAX_CONTENT_LENGTH; larger: 413 before parsing).
#: The biggest legitimate body is an audit-intake batch (at most 1000 events of a few KB); without
#: a limit a JSON body of any size would be held in memory, several times over, by a worker.
MAX_BODY_BYTES = 16 * 1024 * 1024


def create_app(settings: Settings, *, config: dict[str, Any] | None = None, **services: Any) -> Flask:
    """Build the app.  ``config`` overrides Flask/limit keys; ``services`` injects prepared service
    objects (e.g. ``token_service=``, ``audit_store=``) instead of building them from ``settings``."""
    app = Flask("bridge")
    app.config.update(limits.app_config(settings.web))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config.from_prefixed_env("PACS_BRIDGE_FLASK")
    app.config.update(config or {})
    app.config["BRIDGE_SETTINGS"] = settings
    client.install_proxy_fix(app, settings.web)  # before anything reads request.remote_addr
    app.before_request(_length_required)
    metrics.init_app(app, settings.web.metrics)

    from bridge.services import APP_EXTENSION, Services
    from bridge.web import audit_api, health, tokens

    # the composition root: the app's engine, audit store and token service (injected ones win)
    app.extensions[APP_EXTENSION] = Services(settings, audit_store=services.get("audit_store"),
                                             token_service=services.get("token_service"))

    health.init_app(app)  # /readyz for the load balancer; database errors -> 503 + Retry-After

    audit_api.init_app(app, settings, store=services.get("audit_store"))  # the app's one audit store
    tokens.init_app(app, settings, service=services.get("token_service"))
    service = app.extensions[tokens.EXTENSION]["service"]
    if not isinstance(service.audit, client.AddressedSink):
        service.audit = client.AddressedSink(service.audit)  # every token/login event gets the client address

    from bridge.web import breakglass

    root = app.extensions[APP_EXTENSION]
    breakglass.init_app(app, lambda: root.break_glass)  # emergency access: API, review queue, /metrics

    if settings.bridge.session_secret is not None and settings.keycloak.client_secret is not None:
        from bridge.web import login  # browser login needs both secrets; API-only deployments skip it

        login.init_app(app, settings, service)
        if settings.gateway.enabled:
            from bridge.web import gateway  # the browser gateway to Orthanc rides on the login's client

            gateway.init_app(app, settings, service, app.extensions[login.EXTENSION]["keycloak"],
                             login._engine(app, settings), transport=services.get("gateway_transport"))
            from bridge.web import review  # the access review page rides on the gateway's login

            review.init_app(app)

    from bridge.web import share_page, shares

    shares.init_app(app, settings, services.get("share_service"))  # the sharers' API (docs/sharing.md)
    share_page.init_app(app, settings, services.get("share_service"))  # the external recipients' endpoint

    from bridge.web import orthanc_auth

    orthanc_auth.init_app(app, settings)  # Orthanc's official authorization plugin contract
    limits.init_app(app)
    return app


def _length_required() -> Response | None:
    """A request body without ``Content-Length`` (sent chunked) is refused with 411.

    Why: the web server (granian) ends a chunked body cleanly when the client stops half-way (a
    closed connection, a malformed chunk), so the app would take a cut-off body for a whole one:
    the gateway would send Orthanc a truncated upload as a complete request, a form would lose
    its last fields.  With ``Content-Length`` a short body is noticed (the gateway's transport,
    werkzeug's reader).  No client of the bridge needs chunked uploads: browsers, the Orthanc
    plugin, Keycloak and DICOMweb clients send a length."""
    if "Transfer-Encoding" in request.headers:
        return Response("Content-Length required: request bodies are not accepted chunked\n", status=411,
                        mimetype="text/plain")
    return None
