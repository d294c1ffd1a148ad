"""The gateway's HTTP endpoints: login hand-off, landing page, logout, and the proxy itself.

``<prefix>/``            landing page (who you are, your roles, links, logout)
``<prefix>/logout``      GET: confirmation form; POST (CSRF token): end the session everywhere
``<prefix>/logged-out``  where Keycloak sends the browser back after logout
``<prefix>/<path>``      everything else goes to Orthanc with the session's PACS token

Without a live session a navigation is sent to Keycloak (code + PKCE S256, state, nonce, by the
login blueprint's Authlib client; its callback hands the result to :func:`finish_login`); any
other request gets 401, so a script never follows a login redirect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from authlib.integrations.base_client import OAuthError
from flask import Blueprint, Flask, Response, current_app, redirect, request, session, url_for

from bridge.config import GatewaySection, Settings
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.core.errors import VerificationError
from bridge.oidc import session as sess
from bridge.oidc.rejections import SampledRejections
from bridge.tokens import claims as claims_mod
from bridge.tokens.service import IssuedToken, TokenService
from bridge.web.client import client_address, wrap_inside_proxy_fix
from bridge.web.gateway import pages, proxy, rules
from bridge.web.gateway.keycloak import KeycloakEnded, KeycloakSessions
from bridge.web.gateway.maintenance import Maintenance
from bridge.web.gateway.sessions import GatewayLogin, SessionStore, Tokens
from bridge.web.limits import exempt, limit

EXTENSION = "pacs_bridge_gateway"
#: the session cookie: ``__Host-`` (Secure, Path=/, no Domain: only this exact origin may set it)
COOKIE = "__Host-pacs-gateway"
#: methods whose body Orthanc never reads: one sent anyway is refused (it could only desync the
#: connection to Orthanc)
NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
#: answers that have no body (werkzeug never iterates one): the connection is released at once
_EMPTY_STATUSES = frozenset({204, 304})
#: the ``client_id`` of PACS tokens the gateway issues (audit trail, Orthanc's events)
CLIENT_ID = "pacs-gateway"
log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    section: GatewaySection
    service: TokenService
    store: SessionStore
    upstream: proxy.Upstream
    oauth: Any  # the login blueprint's Authlib client
    keycloak: KeycloakSessions
    limits: rules.Limits
    prefix: str
    public_base: str  # https://bridge/pacs
    public_origin: str
    csrf_key: bytes
    #: refusals of the gateway itself, audited a sample at a time (anyone can send them: bounded)
    refusals: Any = None
    next_sweep: float = 0.0
    #: the app (the housekeeping thread audits and calls Keycloak inside its context)
    app: Any = None
    #: the per-worker housekeeping thread (watermark reloads, the idle sweep): :mod:`.maintenance`
    maintenance: Any = None
    #: the last watermark reload failed (logged once per outage)
    reload_failing: bool = False


def init_app(app: Flask, settings: Settings, service: TokenService, oauth: Any, engine: Any,
             transport: Any = None) -> Gateway:
    """Register the gateway (needs the login blueprint: its Authlib client and Flask session)."""
    g = settings.gateway
    assert g.orthanc_url is not None
    if settings.bridge.session_secret is None or settings.keycloak.client_secret is None:
        raise ValueError("gateway: needs bridge.session_secret and keycloak.client_secret (the browser login)")
    public = str(settings.bridge.public_url).rstrip("/")
    gw = Gateway(
        settings=settings, section=g, service=service,
        store=SessionStore.under_kek(engine, service.ring.encryptor, cache_seconds=g.session_cache_seconds),
        upstream=proxy.Upstream(g.orthanc_url, str(g.orthanc_ca_file) if g.orthanc_ca_file else None,
                                g.connect_timeout_seconds, g.read_timeout_seconds, transport=transport),
        oauth=oauth,
        keycloak=KeycloakSessions(oauth, settings.keycloak.client_id,
                                  settings.keycloak.client_secret.get_secret_value(),
                                  str(settings.keycloak.ca_file) if settings.keycloak.ca_file else None),
        limits=rules.Limits(g.idle_timeout_seconds, g.absolute_lifetime_seconds),
        prefix=g.prefix, public_base=public + g.prefix, public_origin=rules.origin_of(public),
        csrf_key=hashlib.sha256(b"gateway csrf\0"
                                + settings.bridge.session_secret.get_secret_value().encode()).digest(),
    )
    gw.app = app
    gw.next_sweep = time.time() + SWEEP_EVERY_SECONDS  # the first sweep a minute after start, as every later one
    gw.maintenance = Maintenance(housekeeping, _housekeeping_period(service))
    gw.refusals = SampledRejections(
        lambda details: service.audit(AuditEventType.ACCESS_DENIED, {"client_id": CLIENT_ID, **details}), "gateway")
    app.extensions[EXTENSION] = gw
    app.config[pages.FORM_TARGETS] = rules.origin_of(settings.keycloak.url)
    bp = Blueprint("gateway", __name__, url_prefix=g.prefix)
    bp.add_url_rule("", "bare", _bare, methods=["GET", "HEAD"])
    bp.add_url_rule("/", "landing", _landing, methods=["GET", "HEAD"])
    bp.add_url_rule("/logout", "logout_form", _logout_form, methods=["GET"])
    bp.add_url_rule("/logout", "logout", _logout, methods=["POST"])
    bp.add_url_rule("/logged-out", "logged_out", _logged_out, methods=["GET"])
    from bridge.web.gateway import breakglass

    breakglass.register(bp)  # emergency access: form, fresh login, review queue
    bp.add_url_rule("/<path:rest>", "proxy", _proxy,
                    methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
    app.register_blueprint(bp)
    from bridge.web.gateway.fast_path import FastPath

    wrap_inside_proxy_fix(app, lambda inner: FastPath(app, inner, gw))  # proxied GETs that need no more
    return gw


def _gw() -> Gateway:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _audit(kind: AuditEventType, details: Mapping[str, Any]) -> None:
    _gw().service.audit(kind, {"client_id": CLIENT_ID, **details})


def _refuse(status: int, reason: str, login: GatewayLogin | None = None) -> Response:
    """A refusal by the gateway itself (audited in bounded volume: an unauthenticated flood of bad
    paths must not fill the audit store; the body says why, never a secret)."""
    _gw().refusals({"reason": f"gateway: {reason}", "path": request.path[:300],
                    **({"subject": login.subject_id, "username": login.username} if login else {})})
    return pages.secure(Response(f"{reason}\n", status=status, mimetype="text/plain"))


def _token_claims(token: str | None) -> dict[str, Any]:
    """Claims of a token the gateway holds encrypted (a PACS token it issued, or an ID token straight
    from Keycloak's token endpoint): no signature to check here.  The payload is decoded by hand,
    on every request: PyJWT's unverified decode cost ~0.5 ms."""
    try:
        payload = str(token).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def csrf_for(gw: Gateway, login: GatewayLogin) -> str:
    return hmac.new(gw.csrf_key, login.id_hash.encode(), hashlib.sha256).hexdigest()


def _clear_cookie(resp: Response) -> Response:
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return resp


# --------------------------------------------------------------------------- login


#: the bridge's own pages that ride on the gateway's login (bridge/web/review.py): a login started
#: there may return there
OWN_PAGES = ("/review/",)


def _safe_next(value: Any) -> str:
    """Only a path under the prefix (or one of :data:`OWN_PAGES`) may be the target after login
    (no open redirect)."""
    gw = _gw()
    if (isinstance(value, str) and any(value == p or value.startswith(p) for p in OWN_PAGES)
            and "//" not in value and "/." not in value and "\\" not in value
            and rules.plain_raw_path(value.split("?")[0])
            and all(0x20 < ord(c) < 0x7f for c in value)):
        return value
    if (isinstance(value, str) and value.startswith(gw.prefix + "/") and "//" not in value and "\\" not in value
            and rules.upstream_path(value[len(gw.prefix) + 1:].split("?")[0]) is not None
            and rules.plain_raw_path(value.split("?")[0])):
        return value
    return gw.prefix + "/"


def _start_login(force: bool = False, step_up: bool = False, next_path: str | None = None) -> Response:
    """To Keycloak (the Flask session keeps Authlib's state, nonce and PKCE verifier)."""
    gw = _gw()
    pending = session.get(sess.PENDING) if step_up else None
    if not isinstance(pending, dict) or not pending.get("gateway"):
        pending = {"gateway": True, "next": _safe_next(next_path), "stepped_up": False}
    pending["stepped_up"] = pending.get("stepped_up", False) or step_up
    session[sess.PENDING] = pending
    session.permanent = True
    extra: dict[str, Any] = {}
    if step_up:
        extra["acr_values"] = gw.service.mfa_rule.required_acr or "mfa"
    if force:
        extra["prompt"] = "login"  # an idle logout is not undone by a live Keycloak session
    callback = str(gw.settings.bridge.public_url).rstrip("/") + url_for("login.callback")
    resp: Response = gw.oauth.authorize_redirect(callback, **extra)
    return _clear_cookie(pages.secure(resp))


def _login_needed(force: bool = False) -> Response:
    if rules.is_navigation(request.method, request.headers):
        return _start_login(force=force, next_path=request.full_path.rstrip("?"))
    resp = pages.secure(Response("no gateway session (log in again: reload the page)\n", status=401,
                                 mimetype="text/plain"))
    return _clear_cookie(resp)


def finish_login(pending: dict[str, Any]) -> Response:
    """The login blueprint's callback, for a gateway login: validate, require MFA, issue the PACS
    token, start a fresh session (a new random id: nothing from before the login is reused)."""
    gw = _gw()
    service = gw.service
    try:
        token = gw.oauth.authorize_access_token()
    except OAuthError as exc:
        service.audit(AuditEventType.LOGIN_FAILURE, {"reason": f"oidc callback: {exc.error}", "client_id": CLIENT_ID})
        return pages.message("Login failed", f"The login did not complete ({exc.error}).", 400,
                             gw.prefix + "/", "Try again")
    id_claims = dict(token.get("userinfo") or {})
    try:
        assert service.keycloak is not None
        access = service.keycloak.validate(token["access_token"])
    except (VerificationError, KeyError) as exc:
        return pages.message("Login failed", f"The login did not complete ({getattr(exc, 'reason', 'no token')}).",
                             400, gw.prefix + "/", "Try again")
    if not id_claims or access.get("sub") != id_claims.get("sub"):
        return pages.message("Login failed", "The login did not complete (inconsistent tokens).", 400)
    kc_claims = {**access, **id_claims}
    subject, fallback = claims_mod.subject_from_keycloak(kc_claims)
    service.audit(AuditEventType.LOGIN_SUCCESS, {"subject": subject.id, "username": subject.username,
                                                 "client_id": CLIENT_ID, "acr": subject.acr,
                                                 **({"subject_source": fallback} if fallback else {})})
    verdict = mfa.check(kc_claims, service.mfa_rule)
    if not verdict.ok:
        service.audit(AuditEventType.MFA_FAILURE, {"subject": subject.id, "username": subject.username,
                                                   "reason": verdict.reason, "client_id": CLIENT_ID})
        if pending.get("stepped_up"):
            session.pop(sess.PENDING, None)
            return pages.message("Second factor required",
                                 "PACS access needs a multi-factor login; none was completed.", 401,
                                 gw.prefix + "/", "Log in again")
        session[sess.PENDING] = pending
        return _start_login(step_up=True)
    from bridge.web import login as login_bp

    login_bp._remember_directory_id(str(id_claims["sub"]), subject.id)  # for back-channel logout
    emergency = None
    if pending.get("break_glass") is not None:  # this login was asked for by a break-glass request
        from bridge.web.gateway import breakglass

        emergency = breakglass.complete(pending, kc_claims, subject)  # before the token: it carries the grant
    issued = _issue(kc_claims)
    session.clear()  # nothing of the login transaction stays in the Flask cookie
    if issued is None:
        return pages.message("No PACS access", "Your account holds no PACS role.", 403)
    raw = gw.store.create(
        subject_id=subject.id, kc_sub=str(id_claims["sub"]), sid=id_claims.get("sid"), username=subject.username,
        tokens=Tokens(issued.access_token, token.get("refresh_token"), token.get("id_token")),
        token_exp=float(issued.claims["exp"]), lifetime_seconds=_lifetime(kc_claims))
    resp = pages.secure(redirect(_safe_next(pending.get("next")), code=303))
    if emergency is not None:
        resp = pages.message(emergency[0], emergency[1], emergency[2], gw.prefix + "/", "Continue to the PACS")
    resp.set_cookie(COOKIE, raw, path="/", secure=True, httponly=True, samesite="Lax")
    return resp


def _lifetime(kc_claims: Mapping[str, Any]) -> float:
    """The absolute lifetime, never beyond Keycloak's SSO max counted from the authentication."""
    gw = _gw()
    now = time.time()
    life = float(gw.section.absolute_lifetime_seconds)
    auth_time = kc_claims.get("auth_time")
    if isinstance(auth_time, int | float):
        life = min(life, auth_time + gw.section.keycloak_sso_max_seconds - now)
    return max(life, 1.0)


def _issue(kc_claims: Mapping[str, Any]) -> IssuedToken | None:
    """A PACS token with the grant read from the assignment store now (None: no PACS role)."""
    service = _gw().service
    subject, _ = claims_mod.subject_from_keycloak(kc_claims)
    with service.read_scope():
        grant = service.grant_for(subject, kc_claims)
    if not grant.permissions:
        service.audit(AuditEventType.ACCESS_DENIED, {"subject": subject.id, "username": subject.username,
                                                     "reason": service.denial_reason(grant), "client_id": CLIENT_ID})
        return None
    return service.issue(subject, grant, CLIENT_ID)


# --------------------------------------------------------------------------- session life


def _end(login: GatewayLogin, reason: str, *, end_keycloak: bool) -> None:
    """End a gateway session: the row, the PACS token, and (idle/absolute) Keycloak's session."""
    gw = _gw()
    gw.store.end(login.id_hash)
    claims = _token_claims(login.tokens.pacs_token)
    if claims.get("jti") and claims.get("exp"):
        gw.service.revoke(claims, by_client=CLIENT_ID)
    if end_keycloak:
        gw.keycloak.end(login.tokens.refresh_token)
    _audit(AuditEventType.LOGOUT, {"subject": login.subject_id, "username": login.username, "reason": reason})


#: how often a worker looks for sessions that went idle unseen (their Keycloak sessions are ended)
SWEEP_EVERY_SECONDS = 60.0


def _housekeeping_period(service: TokenService) -> float:
    """How often the housekeeping thread runs: twice per life of the watermark cache, so the cache
    is reloaded before a request could find it expired (1 s for the default 2 s cache)."""
    cache = float(getattr(service.revocations, "cache_seconds", 0) or 0)
    return min(1.0, max(0.2, cache / 2)) if cache > 0 else 1.0


def housekeeping(gw: Gateway) -> None:
    """One round of the housekeeping thread: reload the subject watermarks (before the request
    path would have to), and sweep when a minute has passed.  Each part fails on its own."""
    reload = getattr(gw.service.revocations, "reload_subjects", None)
    if reload is not None:
        try:
            reload()
        except Exception as exc:  # the request path reloads the expired cache itself
            if not gw.reload_failing:  # once per outage, not every second of it
                log.warning("gateway: reloading the revocation watermarks failed (%s); retrying every "
                            "round, requests reload the expired cache themselves", type(exc).__name__)
            gw.reload_failing = True
        else:
            if gw.reload_failing:
                log.warning("gateway: reloading the revocation watermarks works again")
            gw.reload_failing = False
    if time.time() >= gw.next_sweep:
        with gw.app.app_context():
            sweep(gw)


def sweep(gw: Gateway, now: float | None = None) -> int:
    """End sessions past their idle or absolute limit that nobody came back to: their Keycloak
    sessions are ended too, so a walk-up to the unattended workstation meets the password form
    even without the old cookie.  At most once a minute per worker, in the housekeeping thread
    (never on a request's way: it may call Keycloak once per session it ends)."""
    now = time.time() if now is None else now
    if now < gw.next_sweep:
        return 0
    gw.next_sweep = now + SWEEP_EVERY_SECONDS
    ended = gw.store.expired(gw.limits.idle_seconds)
    for login in ended:
        claims = _token_claims(login.tokens.pacs_token)
        if claims.get("jti") and claims.get("exp"):
            gw.service.revoke(claims, by_client=CLIENT_ID)
        gw.keycloak.end(login.tokens.refresh_token)
        gw.service.audit(AuditEventType.LOGOUT, {"client_id": CLIENT_ID, "subject": login.subject_id,
                                                 "username": login.username, "reason": "idle timeout (sweep)"})
    return len(ended)


def _current(activity: bool) -> GatewayLogin | Response:
    """The live session of this request (renewed if due), or the response that replaces it."""
    gw = _gw()
    gw.maintenance.ensure_running(gw)  # watermarks and the idle sweep, off this request's path
    raw = request.cookies.get(COOKIE)
    login = gw.store.get(raw)
    if login is None:
        # a cookie whose session is gone (swept idle, ended elsewhere): the password again, never a
        # silent re-entry through a Keycloak session that might still live
        return _login_needed(force=bool(raw))
    now = time.time()
    why = rules.ended(login.created_at, login.last_activity, login.expires_at, now, gw.limits)
    if why is not None:  # the row itself decides (another worker may have seen activity this one has not)
        login = gw.store.get(raw, fresh=True)
        if login is None:
            return _login_needed(force=True)
        why = rules.ended(login.created_at, login.last_activity, login.expires_at, now, gw.limits)
    if why is not None:
        _end(login, why, end_keycloak=True)
        return _login_needed(force=True)
    if renewal_due(gw, login, now):
        renewed = _renew(login, now)
        if isinstance(renewed, Response):
            return renewed
        login = renewed
    if activity and touch_due(gw, login, now):
        login = gw.store.touch(login, now)
    return login


def renewal_due(gw: Gateway, login: GatewayLogin, now: float) -> bool:
    """The session's PACS token must be renewed before use: it nears its end, or the subject's
    watermark (a leaver, a role removal) is at or after its ``iat``.  The watermarks are the PACS's
    revocation list, cached a few seconds per worker and reloaded ahead of time by the housekeeping
    thread: noticed within that interval, without a query on the request's path."""
    if login.token_exp - now < gw.section.renew_margin_seconds:
        return True
    marks = gw.service.revocations.subjects()
    mark = max((marks[s][0] for s in (login.subject_id, login.kc_sub) if s in marks), default=None)
    return mark is not None and float(_token_claims(login.tokens.pacs_token).get("iat", 0)) <= mark


def touch_due(gw: Gateway, login: GatewayLogin, now: float) -> bool:
    """The idle clock is written at most every ``activity_write_seconds`` (docs/gateway.md)."""
    return now - login.last_activity >= rules.activity_write_seconds(gw.limits.idle_seconds)


def current_login() -> GatewayLogin | Response:
    """The live gateway session of this request (renewed if due; MFA held at login and at every
    renewal), or the response that replaces it: for the bridge's own pages beside the proxy (the
    access review page, bridge/web/review.py) that ride on the gateway's login."""
    return _current(activity=True)


def session_claims(login: GatewayLogin) -> dict[str, Any]:
    """The claims of the session's current PACS token (issued by the bridge itself)."""
    return _token_claims(login.tokens.pacs_token)


def _renew(login: GatewayLogin, now: float) -> GatewayLogin | Response:
    """A new PACS token from a refreshed Keycloak session: a logged-out or disabled account, a
    lost second factor or a removed role ends the session or reaches the new token."""
    gw = _gw()
    service = gw.service
    if not login.tokens.refresh_token:
        _end(login, "no refresh token", end_keycloak=False)
        return _login_needed()
    try:
        fresh = gw.keycloak.refresh(login.tokens.refresh_token)
        assert service.keycloak is not None
        access = service.keycloak.validate(str(fresh["access_token"]))
    except KeycloakEnded as exc:
        _end(login, f"Keycloak session ended ({exc})", end_keycloak=False)
        return _login_needed()
    except VerificationError as exc:
        _end(login, f"renewal refused: {exc.reason}", end_keycloak=True)
        return _login_needed()
    except (requests.RequestException, KeyError, ValueError) as exc:
        if login.token_exp - now > 5:  # the token in hand still serves; try again next request
            log.warning("gateway: renewal failed (%s); the current token is used", type(exc).__name__)
            return login
        return pages.secure(Response("the identity provider is unreachable; retry shortly\n", status=503,
                                     mimetype="text/plain", headers={"Retry-After": "10"}))
    id_token = fresh.get("id_token") or login.tokens.id_token
    # the ID token came straight from Keycloak's token endpoint over TLS (OIDC Core 3.1.3.7)
    id_claims = _token_claims(id_token) if fresh.get("id_token") else {}
    kc_claims = {**access, **{k: v for k, v in id_claims.items() if k in claims_mod.DIRECTORY_ID_CLAIMS}}
    subject, _ = claims_mod.subject_from_keycloak(kc_claims)
    why = service.logged_out(kc_claims, subject)
    verdict = mfa.check(kc_claims, service.mfa_rule)
    if subject.id != login.subject_id or why is not None or not verdict.ok:
        _end(login, why or verdict.reason or "another subject", end_keycloak=True)
        return _login_needed(force=True)
    issued = _issue(kc_claims)
    if issued is None:
        _end(login, "no PACS role any more", end_keycloak=True)
        return _clear_cookie(pages.message("No PACS access", "Your account holds no PACS role any more.", 403))
    tokens = Tokens(issued.access_token, fresh.get("refresh_token") or login.tokens.refresh_token, id_token)
    gw.store.renew(login.id_hash, tokens, float(issued.claims["exp"]))
    return GatewayLogin(login.id_hash, login.subject_id, login.kc_sub, login.sid, login.username, login.created_at,
                        login.last_activity, login.expires_at, float(issued.claims["exp"]), tokens)


def end_for_logout(sid: str | None, subjects: tuple[str, ...]) -> int:
    """Back-channel logout: end every gateway session of Keycloak session ``sid`` or of ``subjects``
    now, revoking their PACS tokens (called by the login blueprint)."""
    gw = current_app.extensions.get(EXTENSION)
    if gw is None:
        return 0
    ended = gw.store.end_for(sid=sid, subjects=subjects)
    for login in ended:
        claims = _token_claims(login.tokens.pacs_token)
        if claims.get("jti") and claims.get("exp"):
            gw.service.revoke(claims, by_client="keycloak")
    return len(ended)


# --------------------------------------------------------------------------- pages


def _bare() -> Response:
    return pages.secure(redirect(_gw().prefix + "/", code=308))


@limit("login")
def _landing() -> Response:
    gw = _gw()
    login = _current(activity=True)
    if isinstance(login, Response):
        return login
    claims = _token_claims(login.tokens.pacs_token)
    from bridge.web.gateway import breakglass

    csrf = csrf_for(gw, login)
    return pages.landing(claims, gw.prefix, csrf, gw.section.idle_timeout_seconds // 60,
                         sections=breakglass.landing_sections(login, csrf))


def _logout_form() -> Response:
    gw = _gw()
    login = gw.store.get(request.cookies.get(COOKIE))
    if login is None:
        return _clear_cookie(pages.message("Logged out", "You are not logged in to the PACS.", 200,
                                           gw.prefix + "/", "Log in"))
    return pages.confirm_logout(gw.prefix, csrf_for(gw, login))


@limit("login")
def _logout() -> Response:
    """End the session (row, PACS token), then RP-initiated logout at Keycloak."""
    gw = _gw()
    ok, why = rules.same_origin("POST", request.headers, gw.public_origin)
    if not ok:
        return _refuse(403, f"logout refused: {why}")
    login = gw.store.get(request.cookies.get(COOKIE))
    if login is None:
        return _clear_cookie(pages.message("Logged out", "You are logged out.", 200, gw.prefix + "/", "Log in"))
    given = request.form.get("csrf_token", "")
    if not hmac.compare_digest(csrf_for(gw, login).encode(), given.encode()):
        return _refuse(403, "logout: missing or wrong csrf_token (use the form)", login)
    _end(login, "logout", end_keycloak=False)
    meta = gw.oauth.load_server_metadata()
    from urllib.parse import urlencode

    params = {"client_id": gw.settings.keycloak.client_id,
              "post_logout_redirect_uri": gw.public_base + "/logged-out"}
    if login.tokens.id_token:
        params["id_token_hint"] = login.tokens.id_token
    resp = redirect(meta["end_session_endpoint"] + "?" + urlencode(params), code=303)
    return _clear_cookie(pages.secure(resp))


def _logged_out() -> Response:
    gw = _gw()
    return _clear_cookie(pages.message("Logged out", "You are logged out of the PACS.", 200,
                                       gw.prefix + "/", "Log in again"))


# --------------------------------------------------------------------------- the proxy


def url_has_token(args: Any) -> bool:
    """A token-looking query parameter (tokens are never accepted in a URL: logs, history, Referer)."""
    return any(k.lower() in ("access_token", "token", "id_token") for k in args)


def _bearer_request(path: str) -> bool:
    """An external viewer's DICOMweb call: its own ``Authorization``, no cookie needed."""
    return path.startswith("/dicom-web/") and "Authorization" in request.headers


def _cors(resp: Response) -> Response:
    origin = request.headers.get("Origin")
    if origin and origin in _gw().section.viewer_origins:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Expose-Headers"] = "Content-Type, Content-Length, Location"
    resp.headers.add("Vary", "Origin")
    return resp


def _preflight(path: str) -> Response:
    origin = request.headers.get("Origin")
    if not path.startswith("/dicom-web/") or origin not in _gw().section.viewer_origins:
        return _refuse(403, "CORS: origin not allowed")
    resp = Response(status=204)
    resp.headers["Access-Control-Allow-Origin"] = str(origin)
    resp.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST"
    resp.headers["Access-Control-Allow-Headers"] = "Authorization, Accept, Content-Type"
    resp.headers["Access-Control-Max-Age"] = "600"
    resp.headers["Vary"] = "Origin"
    return resp


@exempt  # no rate limit of its own (a viewer fetches hundreds of images a minute): skip the limiter's lookups
def _proxy(rest: str) -> Response:
    gw = _gw()
    path = rules.upstream_path(rest)
    if path is None:
        return _refuse(400, "path refused (dot or empty segments, control characters, or ?, # or % in a segment)")
    if url_has_token(request.args):
        return _refuse(400, "tokens are not accepted in the URL")
    if rules.overrides_method(request.args):
        return _refuse(400, "method overrides are not accepted: use the method itself")
    if request.method == "OPTIONS":
        return _preflight(path)
    if _bearer_request(path):
        auth = request.headers.getlist("Authorization")
        if len(auth) != 1 or not auth[0].lower().startswith("bearer ") or "," in auth[0]:
            return _cors(_refuse(401, "one Authorization: Bearer header required"))
        return _cors(_forward(path, auth[0][7:].strip(), None))
    ok, why = rules.same_origin(request.method, request.headers, gw.public_origin)
    if not ok:
        return _refuse(403, f"cross-site request refused: {why}")
    activity = rules.is_activity(request.method, path, request.headers, gw.section.background_paths)
    login = _current(activity)
    if isinstance(login, Response):
        return login
    return _forward(path, login.tokens.pacs_token, login)


def _forward(path: str, bearer: str, login: GatewayLogin | None) -> Response:
    if request.method in NO_BODY and request.content_length:  # (a chunked body: 411 before any view, app.py)
        return _refuse(400, f"a {request.method} request carries no body")
    request.max_content_length = sys.maxsize  # uploads stream through (None would mean the app-wide cap)
    has_body = request.method in ("POST", "PUT") or request.content_length
    return forward(_gw(), request.method, path, request.query_string, proxy.header_items(request.headers), bearer,
                   client_address(), proxy.body_iter(request.stream) if has_body else None)


def forward(gw: Gateway, method: str, path: str, query: bytes, incoming: list[tuple[str, str]], bearer: str,
            workstation: str | None, body: Any = None) -> Response:
    """One request to Orthanc and its answer for the browser (used by the Flask route and by the
    fast path, bridge/web/gateway/fast_path.py: no request context needed)."""
    headers = proxy.request_headers(incoming, bearer, workstation)
    length = next((v for k, v in incoming if k.lower() == "content-length"), None)
    try:
        upstream = gw.upstream.open(method, path, query, headers, body, length)
    except Exception as exc:  # any transport failure is a 502, never a traceback
        log.warning("gateway: Orthanc unreachable: %s", type(exc).__name__)
        return pages.secure(Response("the PACS is unreachable\n", status=502, mimetype="text/plain"))
    out_headers = proxy.response_headers(upstream.headers.multi_items(), gw.upstream.base, gw.public_base)
    content_type = upstream.headers.get("content-type")
    if _is_explorer_page(path, method, upstream, content_type):
        try:
            page = upstream.read()
        finally:
            upstream.close()
        resp = Response(proxy.inject_logout(page, gw.prefix + "/logout"), status=upstream.status_code,
                        headers=out_headers)
    elif method == "HEAD" or upstream.status_code in _EMPTY_STATUSES:
        try:
            upstream.read()  # nothing: gives the connection back (werkzeug would not iterate this body)
        finally:
            upstream.close()
        resp = Response(b"", status=upstream.status_code, headers=out_headers)
        upstream_length = upstream.headers.get("content-length")
        del resp.headers["Content-Length"]  # not the 0 of this empty body
        if upstream_length is not None and method == "HEAD" and upstream.status_code not in _EMPTY_STATUSES:
            resp.headers["Content-Length"] = upstream_length  # what the GET would carry (RFC 9110 9.3.2)
    elif proxy.needs_rewrite(content_type):
        try:
            data = upstream.read()
        finally:
            upstream.close()
        resp = Response(proxy.rewrite_json(data, gw.upstream.base, gw.public_base), status=upstream.status_code,
                        headers=out_headers)
    else:
        def stream() -> Any:  # needs no request context: only the answer
            try:
                if upstream.is_stream_consumed:  # an answer already read (a transport that buffers)
                    yield upstream.content
                else:
                    yield from upstream.iter_raw(proxy.RESPONSE_CHUNK)
            finally:
                upstream.close()

        resp = Response(stream(), status=upstream.status_code, headers=out_headers)
        upstream_length = upstream.headers.get("content-length")
        if upstream_length is not None and method != "HEAD":
            resp.headers["Content-Length"] = upstream_length
    return _harden(resp, content_type)


def _is_explorer_page(path: str, method: str, upstream: Any, content_type: str | None) -> bool:
    """Orthanc Explorer's page, answered in full (GET, 200, HTML, a small body): it gets the logout link."""
    length = upstream.headers.get("content-length")
    return (path == proxy.EXPLORER_PAGE and method == "GET" and upstream.status_code == 200
            and bool(content_type) and content_type.lower().startswith("text/html")  # type: ignore[union-attr]
            and (length is None or (length.isdigit() and int(length) <= proxy.EXPLORER_MAX_BYTES)))


def _harden(resp: Response, content_type: str | None) -> Response:
    """Headers the gateway sets on everything it relays from Orthanc."""
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    if content_type and content_type.lower().startswith("text/html"):
        # Orthanc Explorer's pages: scripts and styles from the gateway only (it needs inline/eval)
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
            "frame-ancestors 'self'; form-action 'self'; base-uri 'self'")
    if "Cache-Control" not in resp.headers:
        resp.headers["Cache-Control"] = "no-store"
    return resp
