"""The Flask app factory: the only way to get the bridge's web application.

Nothing happens at import time; tests build one app per test with their own settings.  Each
concern registers its blueprint here (tokens now; login, audit, ... as they land).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from bridge.config import Settings
from bridge.web import limits


def create_app(settings: Settings, *, config: dict[str, Any] | None = None, **services: Any) -> Flask:
    """Build the app.  ``config`` overrides Flask/limit keys; ``services`` injects prepared service
    objects (e.g. ``token_service=``, ``audit_store=``) instead of building them from ``settings``."""
    app = Flask("bridge")
    app.config.update(limits.DEFAULTS)
    app.config.from_prefixed_env("PACS_BRIDGE_FLASK")
    app.config.update(config or {})
    app.config["BRIDGE_SETTINGS"] = settings
    limits.limiter.init_app(app)

    from bridge.web import audit_api, health, tokens

    health.init_app(app)  # /readyz for the load balancer; database errors -> 503 + Retry-After

    audit_api.init_app(app, settings, store=services.get("audit_store"))  # the app's one audit store
    tokens.init_app(app, settings, service=services.get("token_service"))

    if settings.bridge.session_secret is not None and settings.keycloak.client_secret is not None:
        from bridge.web import login  # browser login needs both secrets; API-only deployments skip it

        login.init_app(app, settings, app.extensions[tokens.EXTENSION]["service"])

    from bridge.web import orthanc_auth

    orthanc_auth.init_app(app, settings)  # Orthanc's official authorization plugin contract
    return app
