"""Browser login: ``/login`` -> Keycloak -> ``/oidc/callback`` -> a PACS token for the viewer.

``/login?redirect_uri=<viewer>&state=<viewer state>``: the redirect URI must equal one of
``bridge.viewer_redirect_uris`` exactly (no prefix or pattern match: an open redirect would hand
tokens to anyone).  Without a live login the browser goes to Keycloak (Authlib: code + PKCE S256 +
state + nonce).  Back at ``/oidc/callback`` the ID token is validated (Authlib) and the access
token by the token service's own Keycloak validator; if the login did not reach the MFA level
(:mod:`bridge.core.mfa`, the one rule) the browser is sent to Keycloak once more with
``acr_values=mfa`` (step-up) and no token is issued.  Once it holds, the PACS token goes to the
viewer in the URI *fragment* (never the query: fragments are not sent to servers nor logged).

What the PACS token grants is read from the assignment store when it is issued (never from the
session cookie): a role the sync removed after the login is not in the next token.

``/logout``: a GET only shows a confirmation form; the POST (with the form's CSRF token) ends the
bridge session, revokes the subject's PACS tokens and sends the browser to Keycloak's
end-session endpoint with ``id_token_hint`` (RP-initiated logout 1.0).  A link or image on
another site therefore cannot log anybody out.
``/backchannel-logout``: Keycloak's server-to-server logout (Back-Channel Logout 1.0): validates
the logout token (its ``jti`` recorded in the database, so a replay is refused by every worker),
ends the bridge session(s) of that ``sid``/``sub`` and revokes the PACS tokens.  It is rate
limited, and refusals are audited in a bounded way (:mod:`bridge.oidc.rejections`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.base_client import OAuthError
from flask import Blueprint, Flask, Response, current_app, redirect, render_template_string, request, session, url_for

from bridge.config import Settings
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.core.errors import VerificationError
from bridge.oidc import client as oidc_client
from bridge.oidc import session as sess
from bridge.oidc.logout_token import LogoutTokenError, LogoutTokenValidator
from bridge.oidc.rejections import SampledRejections
from bridge.oidc.state import SqlEndedSessions, SqlReplayCache
from bridge.oidc.users import directory_id_from_admin_api
from bridge.tokens import claims as claims_mod
from bridge.tokens.service import TokenService
from bridge.web.errors import oauth_error_response
from bridge.web.limits import limit

bp = Blueprint("login", __name__)
EXTENSION = "pacs_bridge_login"
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
    from bridge.store.db import engine

    return engine(settings.store.url)


def _ext() -> dict[str, Any]:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _error(status: int, message: str) -> Response:
    resp = Response(message + "\n", status=status, mimetype="text/plain")
    return _no_store(resp)


def _current_login() -> sess.Login | None:
    ext = _ext()
    revocations = ext["service"].revocations

    def lookup(sub: str) -> int | None:  # fresh: a logout or role removal in another worker counts now
        return revocations.watermark((sub,))  # type: ignore[no-any-return]

    login, _why = sess.current(session, ext["timeouts"], ext["ended"], lookup)
    return login


def _to_keycloak(step_up: bool) -> Response:
    ext = _ext()
    extra = {"acr_values": ext["service"].mfa_rule.required_acr or "mfa"} if step_up else {}
    session.permanent = True
    # the callback URL from the configured public URL, never from the request's Host header: a
    # forged Host would otherwise send Keycloak's code to wherever it names
    callback = str(ext["settings"].bridge.public_url).rstrip("/") + url_for("login.callback")
    resp: Response = ext["keycloak"].authorize_redirect(callback, **extra)
    return _no_store(resp)


@bp.get("/login")
@limit("login")
def login() -> Response:
    """Start (or finish, with a live MFA session) a browser login for a viewer."""
    ext = _ext()
    redirect_uri = request.args.get("redirect_uri", "")
    if redirect_uri not in ext["redirect_uris"]:
        return _error(400, "redirect_uri: not a registered viewer redirect URI (exact match required)")
    viewer_state = request.args.get("state", "")[:512]
    session[sess.PENDING] = {"redirect_uri": redirect_uri, "state": viewer_state, "stepped_up": False}
    with ext["service"].read_scope():  # logout state and assignments over one connection
        return _login_with(ext)


def _login_with(ext: dict[str, Any]) -> Response:
    """The live session delivers (roles read now), or the browser goes to Keycloak."""
    current = _current_login()
    if current is not None:
        if current.fallback is not None:
            # a local Keycloak account's grant may come from its realm roles, which only a token
            # validated now can tell: back through Keycloak (its SSO session answers at once)
            return _to_keycloak(step_up=False)
        if mfa.check(current.keycloak_claims(), ext["service"].mfa_rule).ok:
            return _deliver(current)
        session[sess.PENDING]["stepped_up"] = True
        return _to_keycloak(step_up=True)
    return _to_keycloak(step_up=False)


@bp.get("/oidc/callback")
@limit("login")
def callback() -> Response:
    """Keycloak's redirect back: validate, keep the login, step up or deliver the PACS token."""
    ext = _ext()
    service: TokenService = ext["service"]
    pending = session.get(sess.PENDING)
    if not isinstance(pending, dict):
        return _error(400, "no login in progress (start at /login)")
    if pending.get("gateway"):
        from bridge.web.gateway import views as gateway

        return gateway.finish_login(pending)
    try:
        token = ext["keycloak"].authorize_access_token()
    except OAuthError as exc:
        service.audit(AuditEventType.LOGIN_FAILURE, {"reason": f"oidc callback: {exc.error}"})
        return _error(400, f"login failed: {exc.error}")
    id_claims = dict(token.get("userinfo") or {})
    if not id_claims:
        return _error(400, "login failed: no ID token")
    assert service.keycloak is not None  # checked in init_app
    try:
        access = service.keycloak.validate(token["access_token"])
    except VerificationError as exc:
        return _error(400, f"login failed: {exc.reason}")
    if access.get("sub") != id_claims.get("sub"):
        return _error(400, "login failed: access and ID token are about different users")
    subject, fallback = claims_mod.subject_from_keycloak({**access, **id_claims})
    now = time.time()
    amr = id_claims.get("amr") or []
    current = sess.Login(
        sub=subject.id, kc_sub=str(id_claims["sub"]), sid=id_claims.get("sid"), username=subject.username,
        name=subject.name, auth_time=subject.auth_time, acr=subject.acr,
        amr=[amr] if isinstance(amr, str) else list(amr),
        id_token=str(token["id_token"]), login_at=now, last_seen=now, fallback=fallback,
    )
    session.clear()  # a fresh session after login (no fixation); pending is put back below
    session.permanent = True
    sess.save(session, current)
    session[sess.PENDING] = pending
    _remember_directory_id(current.kc_sub, current.sub)
    service.audit(AuditEventType.LOGIN_SUCCESS, {"subject": current.sub, "username": current.username,
                                                 "client_id": "browser-login", "acr": current.acr,
                                                 **({"subject_source": fallback} if fallback else {})})
    verdict = mfa.check(current.keycloak_claims(), service.mfa_rule)
    if not verdict.ok:
        service.audit(AuditEventType.MFA_FAILURE, {"subject": current.sub, "username": current.username,
                                                   "reason": verdict.reason, "client_id": "browser-login"})
        if pending.get("stepped_up"):
            return _error(401, "a multi-factor login is required for PACS access; none was completed")
        pending["stepped_up"] = True
        session[sess.PENDING] = pending
        return _to_keycloak(step_up=True)
    return _deliver(current, {**access, **id_claims})


def _remember_directory_id(kc_sub: str, directory_id: str) -> None:
    ids: dict[str, str] = _ext()["directory_ids"]
    if len(ids) >= 10_000:  # bounded; a miss only costs one admin API lookup at back-channel logout
        ids.clear()
    ids[kc_sub] = directory_id


def _deliver(current: sess.Login, fresh_claims: dict[str, Any] | None = None) -> Response:
    """Issue the PACS token and hand it to the viewer in the redirect URI's fragment.

    The grant is read from the assignment store now.  ``fresh_claims`` (the Keycloak tokens just
    validated at the callback) are passed only so that a local account may fall back to its realm
    roles; a session cookie never supplies roles."""
    ext = _ext()
    service: TokenService = ext["service"]
    pending = session.pop(sess.PENDING, None) or {}
    kc_claims = fresh_claims if fresh_claims is not None else current.keycloak_claims()
    subject, _ = claims_mod.subject_from_keycloak(kc_claims)
    grant = service.grant_for(subject, kc_claims)
    if not grant.permissions:
        service.audit(AuditEventType.ACCESS_DENIED, {"subject": subject.id, "username": subject.username,
                                                     "reason": service.denial_reason(grant),
                                                     "client_id": "browser-login"})
        return _error(403, "no PACS access for this account")
    issued = service.issue(subject, grant, ext["settings"].keycloak.client_id)
    fragment = {"access_token": issued.access_token, "token_type": "Bearer",
                "expires_in": str(issued.expires_in), "scope": issued.claims["scope"]}
    if pending.get("state"):
        fragment["state"] = pending["state"]
    resp = redirect(pending["redirect_uri"] + "#" + urlencode(fragment), code=303)
    resp.headers["Referrer-Policy"] = "no-referrer"
    return _no_store(resp)


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
