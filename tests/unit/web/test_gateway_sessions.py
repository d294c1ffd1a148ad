"""Gateway sessions: the store (only a hash of the id, tokens encrypted), the login callback
(cookie flags, a fresh id, MFA), idle and absolute limits, renewal, logout, back-channel logout,
and the ways around them (cookie replay, fixation, forged ids)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from gateway_helpers import BASE, PREFIX, Gateway, kc_token, logout_token
from sqlalchemy import select, text, update

from bridge.store.db import engine, session
from bridge.store.models import GatewaySession, RoleAssignment
from bridge.tokens.keys import KeyEncryptor, SigningKeyError
from bridge.web.gateway import rules, sessions, views
from bridge.web.gateway.sessions import SessionStore


@pytest.fixture
def g(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


def _rows(g: Gateway) -> list[GatewaySession]:
    with session(engine(g.db_url)) as s:
        return list(s.scalars(select(GatewaySession)).all())


def _age(g: Gateway, **delta: float) -> None:
    """Move every session's clocks into the past by the given seconds."""
    with session(engine(g.db_url)) as s:
        for row in s.scalars(select(GatewaySession)).all():
            for column, seconds in delta.items():
                setattr(row, column, datetime.fromtimestamp(getattr(row, column).timestamp() - seconds, UTC))


def _bearer_sub(g: Gateway) -> dict[str, Any]:
    auth = g.orthanc.last.headers["authorization"]
    return dict(jwt.decode(auth[7:], options={"verify_signature": False}))


# --------------------------------------------------------------------------- the store


def test_only_the_id_hash_is_stored_and_the_tokens_are_encrypted(g: Gateway) -> None:
    raw = g.log_in()
    (row,) = _rows(g)
    assert row.id_hash == sessions.hash_id(raw) and raw not in row.id_hash
    dump = bytes(row.secrets)
    issued_token = g.gw.store.get(raw).tokens.pacs_token  # type: ignore[union-attr]
    for secret in (raw, issued_token, "rt-0", "id.token.0"):
        assert secret.encode() not in dump


def test_a_ciphertext_moved_to_another_row_does_not_decrypt(g: Gateway) -> None:
    a = g.log_in()
    b = g.log_in()
    ha, hb = sessions.hash_id(a), sessions.hash_id(b)
    with session(engine(g.db_url)) as s:
        blob = s.get(GatewaySession, ha).secrets  # type: ignore[union-attr]
        s.execute(update(GatewaySession).where(GatewaySession.id_hash == hb).values(secrets=blob))
    assert g.gw.store.get(a) is not None
    assert g.gw.store.get(b) is None  # and the row is gone: it can never be used
    assert {r.id_hash for r in _rows(g)} == {ha}


def test_the_session_key_is_derived_not_the_kek_itself() -> None:
    kek = KeyEncryptor.from_secret(KeyEncryptor.generate_secret())
    derived = kek.derived(sessions.KEY_PURPOSE)
    blob = derived.encrypt(b"secret", "h")
    with pytest.raises(SigningKeyError):
        kek.decrypt(blob, "h")
    with pytest.raises(SigningKeyError):
        kek.derived("another purpose").decrypt(blob, "h")
    assert kek.derived(sessions.KEY_PURPOSE).decrypt(blob, "h") == b"secret"


def test_session_rows_do_not_decrypt_under_another_kek(g: Gateway, tmp_path: Path) -> None:
    raw = g.log_in()
    other = SessionStore.under_kek(engine(g.db_url), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()))
    assert other.get(raw) is None


# --------------------------------------------------------------------------- login callback


def _callback(g: Gateway, monkeypatch: pytest.MonkeyPatch, stepped_up: bool = False, **claims: Any) -> Any:
    """Run /oidc/callback for a gateway login, Authlib's code exchange replaced by a fixed answer."""
    access = kc_token(**claims)
    id_claims = jwt.decode(access, options={"verify_signature": False})
    monkeypatch.setattr(g.oauth, "authorize_access_token", lambda **kw: {
        "access_token": access, "refresh_token": "rt-login", "id_token": "id.token.login",
        "userinfo": {k: v for k, v in id_claims.items() if k not in ("typ", "azp")}})
    from bridge.oidc import session as sess

    with g.client.session_transaction(base_url=BASE) as s:
        s[sess.PENDING] = {"gateway": True, "next": f"{PREFIX}/app/explorer.html", "stepped_up": stepped_up}
    return g.get("/oidc/callback?code=x&state=y")


def test_login_sets_a_host_prefixed_secure_httponly_lax_cookie(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _callback(g, monkeypatch)
    assert r.status_code == 303 and r.headers["Location"] == f"{PREFIX}/app/explorer.html"
    (cookie,) = [c for c in r.headers.getlist("Set-Cookie") if c.startswith(views.COOKIE + "=")]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite"} <= attrs and "domain" not in attrs
    assert "SameSite=Lax" in cookie and "Path=/;" in cookie + ";"
    raw = cookie.split(";")[0].split("=", 1)[1]
    assert sessions.ID_PATTERN.fullmatch(raw)
    # no token in the redirect, the cookie, or the Flask session cookie
    login = g.gw.store.get(raw)
    assert login is not None and login.tokens.refresh_token == "rt-login"
    everything = " ".join(r.headers.getlist("Set-Cookie")) + r.headers["Location"]
    assert login.tokens.pacs_token not in everything and "rt-login" not in everything


def _cookie_value(r: Any) -> str:
    (cookie,) = [c for c in r.headers.getlist("Set-Cookie") if c.startswith(views.COOKIE + "=")]
    return str(cookie.split(";")[0].split("=", 1)[1])


def test_login_gives_a_new_session_id_never_a_planted_one(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = "A" * 43
    g.set_cookie(planted)
    r = _callback(g, monkeypatch)
    raw = _cookie_value(r)
    assert raw != planted and g.gw.store.get(planted) is None
    # a second login in the same browser: yet another id, the first one keeps nothing of it
    r2 = _callback(g, monkeypatch)
    raw2 = _cookie_value(r2)
    assert raw2 != raw


def test_password_only_login_steps_up_then_refuses(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _callback(g, monkeypatch, acr="1", amr=["pwd"])
    assert r.status_code == 302 and "acr_values=mfa" in r.headers["Location"]
    assert _rows(g) == []
    r = _callback(g, monkeypatch, stepped_up=True, acr="1", amr=["pwd"])
    assert r.status_code == 401 and _rows(g) == []


def test_login_without_pacs_role_gets_no_session(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _callback(g, monkeypatch, directory_id="guid-nobody")
    assert r.status_code == 403 and _rows(g) == []


def test_next_after_login_is_only_a_path_under_the_prefix(g: Gateway) -> None:
    with g.app.test_request_context(base_url=BASE):
        for bad in ("https://evil.test/", "//evil.test/pacs/", "/token", "/pacs\\..\\token", None, "/pacs//x",
                    "/pacs/../token", "/pacs/%2e%2e/token", "/pacs/app/%2F%2Fevil.test"):
            assert views._safe_next(bad) == f"{PREFIX}/"
        assert views._safe_next(f"{PREFIX}/app/explorer.html") == f"{PREFIX}/app/explorer.html"


# --------------------------------------------------------------------------- landing page


def test_landing_page_shows_who_and_roles_and_no_token(g: Gateway) -> None:
    raw = g.log_in()
    r = g.get(f"{PREFIX}/")
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    # the logout form's answer redirects to Keycloak: form-action must allow exactly that origin too
    assert "form-action 'self' https://kc.test;" in csp
    # under no-referrer Chromium sends Origin: null with the page's own logout form (refused)
    assert r.headers["Referrer-Policy"] == "same-origin"
    assert "rad.alice" in page and "radiologist" in page and f"{PREFIX}/app/explorer.html" in page
    assert "<script" not in page and 'lang="en"' in page and "<caption" in page and 'scope="col"' in page
    token = g.gw.store.get(raw).tokens.pacs_token  # type: ignore[union-attr]
    assert token not in page and raw not in page and "rt-0" not in page


# --------------------------------------------------------------------------- idle and absolute limits


def test_idle_timeout_ends_the_session_and_keycloaks(g: Gateway) -> None:
    raw = g.log_in()
    _age(g, last_activity=g.settings.gateway.idle_timeout_seconds + 1)
    r = g.get(f"{PREFIX}/app/explorer.html", headers={"Sec-Fetch-Mode": "navigate"})
    assert r.status_code == 302 and "prompt=login" in r.headers["Location"]
    assert g.keycloak.ended == ["rt-0"] and g.gw.store.get(raw) is None
    assert g.orthanc.requests == []


def test_absolute_lifetime_ends_the_session_however_active(g: Gateway) -> None:
    g.log_in(lifetime=60)
    _age(g, created_at=61, expires_at=61)
    r = g.get(f"{PREFIX}/studies")
    assert r.status_code == 401 and g.keycloak.ended == ["rt-0"]


def test_background_polling_does_not_hold_the_session_open(g: Gateway) -> None:
    g.log_in()
    _age(g, last_activity=100)
    before = _rows(g)[0].last_activity
    g.get(f"{PREFIX}/changes?since=0", headers={"Sec-Fetch-Mode": "cors"})
    assert _rows(g)[0].last_activity == before
    g.get(f"{PREFIX}/studies", headers={"Sec-Fetch-Mode": "cors"})
    assert _rows(g)[0].last_activity > before


def test_activity_writes_are_coalesced(g: Gateway) -> None:
    """One idle-clock UPDATE per ``rules.activity_write_seconds`` at most: a request soon after the
    last write changes nothing in the store (no database write on the hot path)."""
    g.log_in()
    every = rules.activity_write_seconds(g.settings.gateway.idle_timeout_seconds)
    _age(g, last_activity=every / 2)
    before = _rows(g)[0].last_activity
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert _rows(g)[0].last_activity == before
    _age(g, last_activity=every / 2 + 1)  # now more than `every` since the last write
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert _rows(g)[0].last_activity > before


def test_coalesced_activity_writes_still_time_out_idle_sessions(g: Gateway) -> None:
    """Activity not written (inside the coalescing window) never extends the session: it ends
    ``idle_timeout`` after the last written activity, i.e. at most ``activity_write_seconds`` early,
    never late."""
    raw = g.log_in()
    idle = g.settings.gateway.idle_timeout_seconds
    every = rules.activity_write_seconds(idle)
    _age(g, last_activity=every - 1)
    assert g.get(f"{PREFIX}/studies").status_code == 200  # activity inside the window: not written
    _age(g, last_activity=idle - every + 1)  # now: idle seconds since the last write
    r = g.get(f"{PREFIX}/studies")
    assert r.status_code == 401 and g.gw.store.get(raw) is None
    assert len(g.orthanc.requests) == 1


def test_activity_write_interval_is_bounded_by_the_idle_timeout() -> None:
    assert rules.activity_write_seconds(900) == rules.ACTIVITY_WRITE_MAX_SECONDS <= 60
    assert rules.activity_write_seconds(60) == 6  # a short idle timeout: a tenth of it
    for idle in (1, 30, 120, 900, 86400):
        assert 0 < rules.activity_write_seconds(idle) <= idle / 10


def test_a_session_ended_by_another_worker_ends_access_at_once(g: Gateway) -> None:
    """Whatever a worker keeps between requests, a row deleted elsewhere (a logout or back-channel
    logout handled by another worker or replica) ends access on the very next request."""
    raw = g.log_in()
    for _ in range(3):
        assert g.get(f"{PREFIX}/studies").status_code == 200
    with session(engine(g.db_url)) as s:  # another worker's logout: only the row goes
        s.execute(GatewaySession.__table__.delete())
    r = g.get(f"{PREFIX}/studies")
    assert r.status_code == 401 and len(g.orthanc.requests) == 3
    assert g.gw.store.get(raw) is None


def test_renewed_tokens_are_used_at_once_on_every_worker(g: Gateway) -> None:
    """Tokens replaced in the row (a renewal by another worker) are the ones sent next."""
    g.log_in()
    assert g.get(f"{PREFIX}/studies").status_code == 200
    first = g.orthanc.last.headers["authorization"]
    other = SessionStore.under_kek(engine(g.db_url), g.service.ring.encryptor)
    fresh = g.issue()
    other.renew(_rows(g)[0].id_hash, sessions.Tokens(fresh.access_token, "rt-9", None),
                float(fresh.claims["exp"]))
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert g.orthanc.last.headers["authorization"] == f"Bearer {fresh.access_token}" != first


def test_a_ciphertext_changed_after_use_is_opened_again_and_refused(g: Gateway) -> None:
    """The worker keeps the opening of a row's ciphertext: a ciphertext replaced in the row (here
    tampered with, after the session was used) is never taken for the one opened before."""
    raw = g.log_in()
    assert g.get(f"{PREFIX}/studies").status_code == 200
    with session(engine(g.db_url)) as s:
        row = s.scalars(select(GatewaySession)).one()
        blob = bytearray(row.secrets)
        blob[-1] ^= 1
        row.secrets = bytes(blob)
    r = g.get(f"{PREFIX}/studies")
    assert r.status_code == 401 and _rows(g) == [] and g.gw.store.get(raw) is None
    assert len(g.orthanc.requests) == 1


def test_the_session_read_retries_a_dead_connection_once(g: Gateway) -> None:
    """The per-request read has no pre-ping (PostgreSQL): a connection found dead is retried once;
    any other database error is not hidden."""
    from sqlalchemy.exc import DBAPIError

    raw = g.log_in()
    store = g.gw.store
    real = store.reader
    calls: list[int] = []

    class Dying:
        invalidated = True

        def connect(self) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise DBAPIError("SELECT", {}, Exception("server closed the connection"),
                                 connection_invalidated=self.invalidated)
            return real.connect()

    store.reader = Dying()  # type: ignore[assignment]
    assert store.get(raw) is not None and len(calls) == 2
    calls.clear()
    Dying.invalidated = False
    with pytest.raises(DBAPIError):
        store.get(raw)
    assert len(calls) == 1


def test_only_postgresql_reads_without_pre_ping() -> None:
    pg = engine("postgresql+psycopg2://bridge:x@db.test/bridge")
    assert pg.pool._pre_ping is True  # type: ignore[attr-defined]
    assert sessions.optimistic_reader(pg).pool._pre_ping is False  # type: ignore[attr-defined]
    assert sessions.optimistic_reader(pg).url == pg.url
    lite = engine("sqlite://")
    assert sessions.optimistic_reader(lite) is lite


def test_the_web_viewers_stability_check_does_not_hold_the_session_open(g: Gateway) -> None:
    """Through the gateway app with its default settings: the viewer's own is-stable-series XHR
    leaves the idle clock alone; its image request (the user scrolling) restarts it."""
    g.log_in()
    _age(g, last_activity=100)
    before = _rows(g)[0].last_activity
    g.get(f"{PREFIX}/web-viewer/is-stable-series/abc", headers={"Sec-Fetch-Mode": "cors"})
    assert _rows(g)[0].last_activity == before
    g.get(f"{PREFIX}/web-viewer/instances/jpeg95-abc_0", headers={"Sec-Fetch-Mode": "cors"})
    assert _rows(g)[0].last_activity > before


def test_activity_rules() -> None:
    bg = ["/changes", "/jobs"]
    assert not rules.is_activity("GET", "/changes", {"Sec-Fetch-Mode": "cors"}, bg)
    assert not rules.is_activity("GET", "/jobs/1", {}, bg)
    assert rules.is_activity("GET", "/changes", {"Sec-Fetch-Mode": "navigate"}, bg)
    assert rules.is_activity("POST", "/changes", {}, bg)
    assert rules.is_activity("GET", "/changesX", {}, bg)  # a prefix match is by path segment
    assert rules.is_activity("GET", "/studies", {}, bg)
    limits = rules.Limits(900, 3600)
    assert rules.ended(0, 0, 3600, 899, limits) is None
    assert rules.ended(0, 0, 3600, 900, limits) == "idle timeout"
    assert rules.ended(0, 3590, 3600, 3600, limits) == "absolute lifetime reached"


def test_gateway_settings_are_validated_naming_the_key() -> None:
    from bridge.config import ConfigError, load_config

    cases = {
        "gateway.prefix": {"prefix": "/pacs/"},
        "gateway.orthanc_url": {"orthanc_url": "ftp://x"},
        "gateway.viewer_origins": {"viewer_origins": ["https://v.test/path"]},
        "gateway.background_paths": {"background_paths": ["changes"]},
        "gateway.absolute_lifetime_seconds": {"absolute_lifetime_seconds": 40000, "keycloak_sso_max_seconds": 36000},
    }
    for key, values in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(None, gateway=values)
        assert any(k == key for k, _ in err.value.problems), (key, err.value.problems)
    for reserved in ("/token", "/login", "/oidc/x"):
        with pytest.raises(ConfigError, match=r"gateway\.prefix"):
            load_config(None, gateway={"prefix": reserved})


# --------------------------------------------------------------------------- renewal


def test_token_near_expiry_is_renewed_through_keycloak(g: Gateway) -> None:
    raw = g.log_in()
    with session(engine(g.db_url)) as s:
        s.execute(update(GatewaySession).values(token_exp=datetime.fromtimestamp(time.time() + 10, UTC)))
    old = g.gw.store.get(raw).tokens.pacs_token  # type: ignore[union-attr]
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert g.keycloak.refreshed == 1
    new = g.gw.store.get(raw)
    assert new is not None and new.tokens.pacs_token != old and new.tokens.refresh_token == "rt-1"
    assert g.orthanc.last.headers["authorization"] == f"Bearer {new.tokens.pacs_token}"


def test_keycloak_session_over_ends_the_gateway_session(g: Gateway) -> None:
    raw = g.log_in()
    with session(engine(g.db_url)) as s:
        s.execute(update(GatewaySession).values(token_exp=datetime.fromtimestamp(time.time() + 10, UTC)))
    g.keycloak.refuse = "invalid_grant"
    assert g.get(f"{PREFIX}/studies").status_code == 401
    assert g.gw.store.get(raw) is None and g.orthanc.requests == []


def test_a_role_change_reaches_the_next_request_through_renewal(g: Gateway) -> None:
    g.log_in()
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert "radiologist" in _bearer_sub(g)["roles"]
    with session(engine(g.db_url)) as s:
        s.execute(text("DELETE FROM role_assignments"))
        s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="referring-physician", scopes={}))
    time.sleep(1.1)  # the watermark is in whole seconds
    g.service.revoke_subject("guid-alice", "role removed by the sync")
    time.sleep(1.1)  # Keycloak's refreshed token comes later than the sync's watermark
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert g.keycloak.refreshed == 1
    assert "radiologist" not in _bearer_sub(g)["roles"]


def test_a_leavers_session_ends_at_the_next_request(g: Gateway) -> None:
    raw = g.log_in()
    with session(engine(g.db_url)) as s:
        s.execute(text("DELETE FROM role_assignments"))
    time.sleep(1.1)
    g.service.revoke_subject("guid-alice", "leaver")
    time.sleep(1.1)
    n = len(g.orthanc.requests)
    r = g.get(f"{PREFIX}/studies")
    assert r.status_code == 403 and len(g.orthanc.requests) == n
    assert g.gw.store.get(raw) is None


# --------------------------------------------------------------------------- logout


def test_logout_get_only_shows_a_form(g: Gateway) -> None:
    raw = g.log_in()
    r = g.get(f"{PREFIX}/logout")
    assert r.status_code == 200 and 'name="csrf_token"' in r.get_data(as_text=True)
    assert g.gw.store.get(raw) is not None


@pytest.mark.parametrize("headers,form", [
    ({"Origin": BASE}, {}), ({"Origin": BASE}, {"csrf_token": "wrong"}),
    ({"Origin": "https://evil.test"}, None), ({}, None), ({"Origin": "null"}, None)])
def test_logout_post_needs_same_origin_and_the_csrf_token(g: Gateway, headers: dict[str, str],
                                                          form: dict[str, str] | None) -> None:
    raw = g.log_in()
    login = g.gw.store.get(raw)
    data = form if form is not None else {"csrf_token": views.csrf_for(g.gw, login)}  # type: ignore[arg-type]
    r = g.post(f"{PREFIX}/logout", headers=headers, data=data)
    assert r.status_code == 403 and g.gw.store.get(raw) is not None


def test_logout_ends_everything_and_the_cookie_cannot_be_replayed(g: Gateway) -> None:
    raw = g.log_in()
    login = g.gw.store.get(raw)
    assert login is not None
    claims = jwt.decode(login.tokens.pacs_token, options={"verify_signature": False})
    r = g.post(f"{PREFIX}/logout", headers={"Origin": BASE}, data={"csrf_token": views.csrf_for(g.gw, login)})
    assert r.status_code == 303
    loc = r.headers["Location"]
    assert loc.startswith("https://kc.test/realms/hospital/protocol/openid-connect/logout?")
    assert "id_token_hint=id.token.0" in loc and "logged-out" in loc
    assert g.service.revocations.is_revoked(claims["jti"])
    # replay the old cookie: no session, nothing reaches Orthanc
    g.set_cookie(raw)
    assert g.get(f"{PREFIX}/studies").status_code == 401
    r = g.get(f"{PREFIX}/", headers={"Sec-Fetch-Mode": "navigate"})
    assert r.status_code == 302 and "/protocol/openid-connect/auth" in r.headers["Location"]
    assert g.orthanc.requests == []


def test_backchannel_logout_ends_gateway_sessions_of_that_sid_at_once(g: Gateway) -> None:
    a = g.log_in(sid="kc-sid-1")
    b = g.log_in(sid="kc-sid-2")
    r = g.post("/backchannel-logout", data={"logout_token": logout_token(sid="kc-sid-1", sub=None)})
    assert r.status_code == 200
    assert g.gw.store.get(a) is None and g.gw.store.get(b) is not None


def test_backchannel_logout_by_sub_ends_every_session_of_the_user(g: Gateway) -> None:
    a = g.log_in(sid="kc-sid-1")
    b = g.log_in(sid="kc-sid-2")
    assert g.post("/backchannel-logout", data={"logout_token": logout_token(sid=None)}).status_code == 200
    assert g.gw.store.get(a) is None and g.gw.store.get(b) is None


def test_sessions_nobody_came_back_to_are_swept_with_their_keycloak_sessions(g: Gateway) -> None:
    idle = g.log_in(sid="kc-sid-idle")
    _age(g, last_activity=g.settings.gateway.idle_timeout_seconds + 5)
    live = g.log_in(sid="kc-sid-live")
    g.gw.next_sweep = 0.0
    assert views.sweep(g.gw) == 1
    assert g.gw.store.get(idle) is None and g.gw.store.get(live) is not None
    assert g.keycloak.ended == ["rt-0"]
    assert views.sweep(g.gw) == 0  # not again within the minute


def test_the_web_viewers_background_request_is_no_activity_by_default() -> None:
    """The Orthanc Web Viewer 2.8 asks ``../is-stable-series/<id>`` by itself (an XHR, not a click)
    each time it opens a series: the default background list holds it, so an open viewer tab does not
    keep the session alive on its own.  Its image requests (``/web-viewer/instances/...``, fetched as
    the user scrolls) and the viewer page itself stay activity."""
    from bridge.config import GatewaySection

    bg = GatewaySection().background_paths
    assert {"/changes", "/jobs", "/system"} <= set(bg)
    xhr = {"Sec-Fetch-Mode": "cors"}
    assert not rules.is_activity("GET", "/web-viewer/is-stable-series/abc-123", xhr, bg)
    assert not rules.is_activity("HEAD", "/web-viewer/is-stable-series/abc-123", xhr, bg)
    assert rules.is_activity("GET", "/web-viewer/is-stable-series/abc", {"Sec-Fetch-Mode": "navigate"}, bg)
    assert rules.is_activity("GET", "/web-viewer/is-stable-seriesX/abc", xhr, bg)
    assert rules.is_activity("GET", "/web-viewer/instances/jpeg95-abc_0", xhr, bg)
    assert rules.is_activity("GET", "/web-viewer/series/abc", xhr, bg)
    assert rules.is_activity("GET", "/web-viewer/app/viewer.html", {"Sec-Fetch-Mode": "navigate"}, bg)
