"""Browser login plumbing: Keycloak's callback, ``/logout`` and ``/backchannel-logout``.

The browser login itself is the PACS gateway's (bridge/web/gateway, docs/gateway.md): the PACS
token stays on the server and the browser holds an opaque session cookie.  The old ``/login``,
which handed the PACS token to a viewer in the redirect URI's fragment, is retired: it now sends
the browser to the gateway (410 without one).  ``/oidc/callback`` is the one callback registered
at Keycloak; it hands the gateway's login on (Authlib: code + PKCE S256 + state + nonce; MFA with
step-up, :mod:`bridge.core.mfa` the one rule).

``/logout``: a GET only shows a confirmation form; the POST (with the form's CSRF token) ends the
bridge session, revokes the subject's PACS tokens and sends the browser to Keycloak's
end-session endpoint with ``id_token_hint`` (RP-initiated logout 1.0).  A link or image on
another site therefore cannot log anybody out.  (The gateway has its own, ``<prefix>/logout``.)
``/backchannel-logout``: Keycloak's server-to-server logout (Back-Channel Logout 1.0): validates
the logout token (its ``jti`` recorded in the database, so a replay is refused by every worker),
ends the bridge and gateway session(s) of that ``sid``/``sub`` and revokes the PACS tokens.  It
is rate limited, and refusals are audited in a bounded way (:mod:`bridge.oidc.rejections`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, current_app, redirect, render_template_string, request, session, url_for

from bridge.config import Settings
from bridge.core.audit_codes import AuditEventType
from bridge.oidc import client as oidc_client
from bridge.oidc import session as sess
from bridge.oidc.logout_token import LogoutTokenError, LogoutTokenValidator
from bridge.oidc.rejections import SampledRejections
from bridge.oidc.state import SqlEndedSessions, SqlReplayCache
from bridge.oidc.users import directory_id_from_admin_api
from bridge.tokens.service import TokenService
from bridge.web.errors import oauth_error_response
from bridge.web.limits import limit

bp = Blueprint("login", __name__)
EXTENSION = "pacs_bridge_login"
#: the gateway's app extension (bridge/web/gateway/views.py): the one browser login that remains
EXTENSION_GATEWAY = "pacs_bridge_gateway"
log = logging.getLogger(__name__)


def init_app(app: Flask, settings: Settings, service: TokenService) -> None:
    """Register the login blueprint; needs ``bridge.session_secret`` and the client secret."""
    b = settings.bridge
    if b.session_secret is None:
        raise ValueError("bridge.session_secret: the browser login needs a session secret")
    app.config.update(
        SECRET_KEY=b.session_secret.get_secret_value(),
        SESSION_COOKIE_NAME="pacs_bridge_session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=b.session_idle_minutes * 60,
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    keycloak = oidc_client.register(app, settings)
    if service.keycloak is None:
        raise ValueError("keycloak: the token service has no Keycloak validator")
    engine = _engine(app, settings)
    if service.ended_sessions is None:
        service.ended_sessions = SqlEndedSessions(engine, ttl_seconds=max(24 * 3600, b.session_absolute_hours * 3600))

    def audit_refusal(details: Any) -> None:
        service.audit(AuditEventType.ACCESS_DENIED, {"client_id": "keycloak", **details})

    app.extensions[EXTENSION] = {
        "settings": settings,
        "service": service,
        "keycloak": keycloak,
        "timeouts": sess.Timeouts(b.session_idle_minutes * 60, b.session_absolute_hours * 3600),
        "ended": service.ended_sessions,
        "directory_ids": {},  # Keycloak user id -> directory id learnt at login (a cache: see users.py)
        "logout_tokens": LogoutTokenValidator(
            oidc_client.issuer(settings), settings.keycloak.client_id, service.keycloak.keys,
            replay=SqlReplayCache(engine),
        ),
        "backchannel_refusals": SampledRejections(audit_refusal, "back-channel logout"),
        "redirect_uris": frozenset(b.viewer_redirect_uris),
    }
    app.register_blueprint(bp)


def _engine(app: Flask, settings: Settings) -> Any:
    """The app's one database engine (the audit store's), else one for ``store.url``."""
    from bridge.web.audit_api import STORE

    store = app.extensions.get(STORE)
    if store is not None and getattr(store, "engine", None) is not None:
        return store.engine
    from bridge.store.db import engine_for

    return engine_for(settings)


def _ext() -> dict[str, Any]:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _error(status: int, message: str) -> Response:
    resp = Response(message + "\n", status=status, mimetype="text/plain")
    return _no_store(resp)


@bp.get("/login")
@limit("login")
def login() -> Response:
    """Retired for browsers: the PACS token no longer travels to a viewer in a URL fragment.

    Staff open the PACS through the gateway (``<public URL><gateway.prefix>/``), where the token
    stays on the server (docs/gateway.md); a bookmark or an old viewer link lands there.  Without
    a gateway there is no browser login at all (410).  ``redirect_uri``/``state`` are ignored: no
    token is ever delivered to them."""
    settings: Settings = _ext()["settings"]
    if settings.gateway.enabled:
        target = str(settings.bridge.public_url).rstrip("/") + settings.gateway.prefix + "/"
        return _no_store(redirect(target, code=303))
    return _error(410, "browser login moved to the PACS gateway (configure gateway.orthanc_url); "
                       "viewers exchange their own Keycloak token at /token")


@bp.get("/oidc/callback")
@limit("login")
def callback() -> Response:
    """Keycloak's redirect back: the gateway's login continues there (:func:`gateway.finish_login`)."""
    pending = session.get(sess.PENDING)
    if not isinstance(pending, dict) or not pending.get("gateway") or EXTENSION_GATEWAY not in current_app.extensions:
        return _error(400, "no login in progress (open the PACS gateway)")
    from bridge.web.gateway import views as gateway

    return gateway.finish_login(pending)


def _remember_directory_id(kc_sub: str, directory_id: str) -> None:
    """Keycloak user id -> directory id learnt at login (back-channel logout names Keycloak's id)."""
    ids: dict[str, str] = _ext()["directory_ids"]
    if len(ids) >= 10_000:  # bounded; a miss only costs one admin API lookup at back-channel logout
        ids.clear()
    ids[kc_sub] = directory_id


CSRF = "bridge_logout_csrf"
_CONFIRM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log out</title></head>
<body><form method="post" action="{{ action }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
{% if post_logout %}<input type="hidden" name="post_logout_redirect_uri" value="{{ post_logout }}">{% endif %}
<p>Log out of the PACS and end your single sign-on session?</p>
<button type="submit">Log out</button>
</form></body></html>
"""


@bp.get("/logout")
@limit("login")
def logout_form() -> Response:
    """A confirmation form, never a logout: a GET can be triggered by any page (an image, a link)."""
    ext = _ext()
    token = session.get(CSRF)
    if not isinstance(token, str):
        token = session[CSRF] = secrets.token_urlsafe(24)
    post_logout = request.args.get("post_logout_redirect_uri")
    body = render_template_string(
        _CONFIRM, action=url_for("login.logout"), csrf=token,
        post_logout=post_logout if post_logout in ext["redirect_uris"] else None,
    )
    resp = Response(body, status=200, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = "default-src 'none'; form-action 'self'; frame-ancestors 'none'"
    resp.headers["X-Frame-Options"] = "DENY"
    return _no_store(resp)


@bp.post("/logout")
@limit("login")
def logout() -> Response:
    """RP-initiated logout: end the bridge session, revoke PACS tokens, then end Keycloak's.

    Needs the CSRF token of the confirmation form (a form field, compared in constant time with
    the one in the session): a cross-site POST carries no cookie (``SameSite=Lax``) and cannot
    know the token either."""
    ext = _ext()
    expected = session.get(CSRF)
    given = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        return _error(403, "logout: missing or wrong csrf_token (use the form at GET /logout)")
    current = sess.load(session)
    session.clear()
    if current is None:
        return _error(200, "logged out")
    ext["service"].audit(AuditEventType.LOGOUT, {"subject": current.sub, "username": current.username,
                                                 "client_id": "browser-login"})
    if current.sid:
        ext["ended"].end(current.sid)
    ext["service"].revoke_subject(current.sub, "logout", by_client="browser-login")
    if current.kc_sub != current.sub:  # the exchange checks Keycloak's id too
        ext["service"].revoke_subject(current.kc_sub, "logout", by_client="browser-login")
    post_logout = request.form.get("post_logout_redirect_uri")
    kwargs: dict[str, Any] = {"client_id": ext["settings"].keycloak.client_id}
    if post_logout and post_logout in ext["redirect_uris"]:
        kwargs["post_logout_redirect_uri"] = post_logout
    metadata = ext["keycloak"].load_server_metadata()
    url = metadata["end_session_endpoint"] + "?" + urlencode({"id_token_hint": current.id_token, **kwargs})
    return _no_store(redirect(url, code=303))


@bp.post("/backchannel-logout")
@limit("backchannel_logout")
def backchannel_logout() -> Response:
    """OIDC Back-Channel Logout 1.0: 200 when done, 400 with an error body otherwise (section 2.8)."""
    ext = _ext()
    service: TokenService = ext["service"]
    token = request.form.get("logout_token")
    if not token:
        ext["backchannel_refusals"]({"reason": "back-channel logout refused: logout_token missing"})
        return _backchannel_error("logout_token missing")
    try:
        claims = ext["logout_tokens"].validate(token)
    except LogoutTokenError as exc:
        ext["backchannel_refusals"]({"reason": f"back-channel logout refused: {exc}"})
        return _backchannel_error(str(exc))
    if isinstance(claims.get("sid"), str):
        ext["ended"].end(claims["sid"])
    kc_sub = claims.get("sub")
    from bridge.web.gateway import views as gateway

    gateway.end_for_logout(claims.get("sid") if isinstance(claims.get("sid"), str) else None,
                           (kc_sub,) if isinstance(kc_sub, str) else ())
    if isinstance(kc_sub, str):
        directory_id = ext["directory_ids"].get(kc_sub)
        if directory_id is None:
            try:
                directory_id = directory_id_from_admin_api(ext["settings"], kc_sub)
            except Exception as exc:  # still revoke what we can below
                log.warning("back-channel logout: directory id lookup failed: %s", type(exc).__name__)
        # a local (non-federated) account's PACS sub is Keycloak's id: revoke that one too
        service.audit(AuditEventType.LOGOUT, {"subject": directory_id or kc_sub, "client_id": "keycloak",
                                              "reason": "back-channel logout"})
        for subject in {s for s in (directory_id, kc_sub) if s}:
            service.revoke_subject(subject, "back-channel logout")
    else:
        service.audit(AuditEventType.LOGOUT, {"client_id": "keycloak", "reason": "back-channel logout (sid only)"})
    return _no_store(Response("", status=200))


def _backchannel_error(description: str) -> Response:
    return oauth_error_response(400, "invalid_request", description)
