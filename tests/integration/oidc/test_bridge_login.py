"""Browser login through the bridge's gateway against the real Keycloak (requests as the browser):
code + PKCE + state + nonce, MFA step-up, the PACS token kept server-side in the gateway session
(read from the session table here, as the gateway does), replayed TOTP, RP-initiated and
back-channel logout revoking the PACS tokens, key rotation, and the retired /login."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from keycloak import KeycloakAdmin
from oidc_helpers import LIFETIME, MAX_LIFETIME, BridgeServer, browse, db_engine, logout_user, otp_for
from sqlalchemy import select

from bridge.core.errors import VerificationError
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.store.db import write_session
from bridge.store.models import RoleAssignment
from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.realm import AD_REALM, LDAP_REALM

pytestmark = pytest.mark.integration

Servers = Callable[[str], BridgeServer]


def password(username: str) -> str:
    return str(demo_data.user(username)["password"])


def verifier(server: BridgeServer, **kw: Any) -> Verifier:
    """The PACS side: JWKS and revocation list pulled over HTTPS from the running bridge."""
    return Verifier(VerifierConfig(issuer=server.url, audience="pacs", jwks_url=server.url + "/jwks.json",
                                   revocation_url=server.url + "/revocations", revocation_refresh_seconds=0,
                                   ca_file=server.ca_file, **kw))


def seed(server: BridgeServer, directory_ids: dict[str, dict[str, str]], username: str, role: str,
         departments: list[str]) -> str:
    """What the sync writes: an assignment keyed by the stable directory id."""
    sid = directory_ids[server.realm][username]
    with write_session(db_engine(server)) as s:  # read-then-write beside the bridge's own writers
        if s.scalar(select(RoleAssignment).where(RoleAssignment.subject_id == sid,
                                                 RoleAssignment.role == role)) is None:
            s.add(RoleAssignment(subject_id=sid, username=username, role=role,
                                 scopes={"departments": departments}))
    return sid


def login(server: BridgeServer, username: str, otp: Any = None) -> Any:
    """Open the gateway as a browser would (a navigation), log in at Keycloak, stop when the
    browser is sent back to the gateway."""
    http = server.http()
    http.headers["Accept"] = "text/html"
    http.headers["Sec-Fetch-Mode"] = "navigate"
    start = f"{server.url}/pacs/"
    return http, browse(http, start, start, username, password(username), otp)


def pacs_token(server: BridgeServer, http: Any) -> str:
    """The PACS token the gateway keeps for this browser's session (never sent to the browser)."""
    from bridge.web.gateway import views

    raw = http.cookies.get(views.COOKIE)
    found = server.app.extensions[views.EXTENSION].store.get(raw)
    assert found is not None, "no gateway session for this browser"
    return str(found.tokens.pacs_token)


def logged_in(server: BridgeServer, res: Any) -> bool:
    return bool(res.final.startswith(server.url + "/pacs/") and res.status == 303)


def introspect(server: BridgeServer, token: str) -> dict[str, Any]:
    r = server.http().post(server.url + "/introspect", data={"token": token}, auth=("pacs", "introspect-secret"))
    assert r.status_code == 200
    return dict(r.json())


@pytest.mark.parametrize("realm", [AD_REALM, LDAP_REALM])
def test_mfa_login_starts_a_gateway_session_with_a_pacs_token(
    realm: str, bridge_servers: Servers, directory_ids: dict[str, dict[str, str]],
) -> None:
    server = bridge_servers(realm)
    sub = seed(server, directory_ids, "rad.res.hana", "radiologist", ["Radiology"])
    http, res = login(server, "rad.res.hana", otp_for(realm, "rad.res.hana"))
    assert logged_in(server, res), (res.status, res.final, res.body[:200], res.forms)
    assert all("access_token" not in h and "eyJ" not in h for h in [*res.hops, res.final])  # never in a URL
    assert "kc-otp-login-form" in res.forms
    # the request to Keycloak: code flow with PKCE S256, state and nonce (Authlib)
    auth = parse_qs(urlsplit(next(h for h in res.hops if "/protocol/openid-connect/auth" in h)).query)
    assert auth["response_type"] == ["code"] and auth["code_challenge_method"] == ["S256"]
    assert auth["state"][0] and auth["nonce"][0] and auth["code_challenge"][0]
    token = pacs_token(server, http)
    claims = verifier(server).verify(token).claims
    assert claims["sub"] == sub  # the directory id (realm mapper LDAP_ID -> directory_id)
    assert claims["acr"] == "mfa" and "otp" in claims["amr"]
    assert claims["roles"] == ["radiologist"]
    assert [g["scope"] for g in claims["grants"]] == [{"departments": ["Radiology"]}]
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    # the gateway cookie's flags
    cookie = next(c for c in http.cookies if c.name == "__Host-pacs-gateway")
    assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/"
    assert str(cookie.get_nonstandard_attr("SameSite")).lower() == "lax"
    # the live session serves the landing page at once, without Keycloak
    r = http.get(f"{server.url}/pacs/", allow_redirects=False)
    assert r.status_code == 200 and "rad.res.hana" in r.text and token not in r.text


def test_retired_login_sends_browsers_to_the_gateway_and_never_a_token(bridge_servers: Servers) -> None:
    server = bridge_servers(AD_REALM)
    for uri in (server.viewer_uri, server.viewer_uri + "x", "https://evil.test/viewer/callback"):
        r = server.http().get(f"{server.url}/login", params={"redirect_uri": uri, "state": "s"},
                              allow_redirects=False)
        assert r.status_code == 303 and r.headers["Location"] == server.url + "/pacs/"


def test_password_only_login_gets_no_token_and_is_sent_to_step_up(bridge_servers: Servers) -> None:
    server = bridge_servers(AD_REALM)
    http, res = login(server, kc.NO_OTP_USER)
    assert not logged_in(server, res) and "__Host-pacs-gateway" not in http.cookies
    assert "access_token" not in res.final and all("access_token" not in h for h in res.hops)
    step_up = [h for h in res.hops if "/protocol/openid-connect/auth" in h and "acr_values=mfa" in h]
    assert step_up, res.hops  # the bridge sent the browser back to Keycloak asking for mfa


def test_replayed_totp_is_refused(bridge_servers: Servers, directory_ids: dict[str, dict[str, str]]) -> None:
    server = bridge_servers(AD_REALM)
    seed(server, directory_ids, "tech.tom", "technologist", ["CT"])
    code = otp_for(AD_REALM, "tech.tom")()
    _h, first = login(server, "tech.tom", lambda: code)
    assert logged_in(server, first), (first.final, first.body[:200])
    _h, again = login(server, "tech.tom", lambda: code)  # a fresh browser, the same code
    assert not logged_in(server, again)
    assert again.forms[-2:] == ["kc-otp-login-form", "kc-otp-login-form"], again.forms


def test_backchannel_logout_revokes_pacs_tokens(
    bridge_servers: Servers, directory_ids: dict[str, dict[str, str]], kc_admin: KeycloakAdmin,
) -> None:
    server = bridge_servers(AD_REALM)
    sub = seed(server, directory_ids, "rad.dana", "radiologist", ["Radiology"])
    http, _res = login(server, "rad.dana", otp_for(AD_REALM, "rad.dana"))
    token = pacs_token(server, http)
    v = verifier(server)
    v.verify(token)
    assert introspect(server, token)["active"] is True
    logout_user(kc_admin, "rad.dana")
    deadline = time.time() + 15
    while time.time() < deadline:
        listed = server.http().get(server.url + "/revocations").json()
        if sub in {e["sub"] for e in listed.get("subjects", [])}:
            break
        time.sleep(0.3)
    else:
        pytest.fail("Keycloak's back-channel logout did not reach the bridge")
    assert introspect(server, token) == {"active": False}
    with pytest.raises(VerificationError, match="revoked"):
        v.verify(token)
    # the gateway session is over too, at once: the next visit goes to Keycloak
    r = http.get(f"{server.url}/pacs/", allow_redirects=False)
    assert r.status_code == 302 and "/protocol/openid-connect/auth" in r.headers["Location"]


def test_backchannel_logout_rejects_forged_tokens(bridge_servers: Servers) -> None:
    server = bridge_servers(AD_REALM)
    forged = jwt.encode({"iss": "x", "aud": "pacs-bridge", "iat": int(time.time()), "jti": "j",
                         "events": {"http://schemas.openid.net/event/backchannel-logout": {}}, "sub": "s"},
                        "k" * 32, algorithm="HS256", headers={"kid": "nope"})
    for data in ({}, {"logout_token": forged}, {"logout_token": "not.a.jwt"}):
        r = server.http().post(server.url + "/backchannel-logout", data=data)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_rp_initiated_logout(bridge_servers: Servers, directory_ids: dict[str, dict[str, str]]) -> None:
    server = bridge_servers(AD_REALM)
    seed(server, directory_ids, "tech.vic", "radiologist", ["Radiology"])
    http, _res = login(server, "tech.vic", otp_for(AD_REALM, "tech.vic"))
    token = pacs_token(server, http)
    r = http.get(server.url + "/pacs/logout", allow_redirects=False)  # a GET only asks
    assert r.status_code == 200 and 'method="post"' in r.text
    assert introspect(server, token)["active"] is True
    origin = {"Origin": server.url}
    assert http.post(server.url + "/pacs/logout", data={}, headers=origin,
                     allow_redirects=False).status_code == 403  # no CSRF token
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]
    assert http.post(server.url + "/pacs/logout", data={"csrf_token": csrf}, headers={"Origin": "null"},
                     allow_redirects=False).status_code == 403  # not same-origin
    r = http.post(server.url + "/pacs/logout", data={"csrf_token": csrf}, headers=origin, allow_redirects=False)
    assert r.status_code == 303
    loc = urlsplit(r.headers["Location"])
    assert loc.path.endswith("/protocol/openid-connect/logout") and parse_qs(loc.query)["id_token_hint"]
    assert introspect(server, token) == {"active": False}
    r2 = http.get(r.headers["Location"], allow_redirects=False)  # Keycloak ends its session
    assert r2.status_code in (200, 302, 303)
    r3 = http.get(server.url + "/pacs/", allow_redirects=False)
    assert r3.status_code == 302 and "/protocol/openid-connect/auth" in r3.headers["Location"]


def test_rotation_keeps_old_tokens_until_expiry_and_no_longer(
    bridge_servers: Servers, directory_ids: dict[str, dict[str, str]],
) -> None:
    server = bridge_servers(AD_REALM)
    for user in ("rad.res.eli", "rad.res.fay"):  # one user per login: no wait for a fresh TOTP window
        seed(server, directory_ids, user, "radiologist", ["Radiology"])
    h1, _res = login(server, "rad.res.eli", otp_for(server.realm, "rad.res.eli"))
    old_token = pacs_token(server, h1)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    ring = server.app.extensions["pacs_bridge_tokens"]["service"].ring
    rotated_at = time.time()
    new_kid = ring.rotate().kid
    kids = {k["kid"] for k in server.http().get(server.url + "/jwks.json").json()["keys"]}
    assert {old_kid, new_kid} <= kids
    verifier(server).verify(old_token)  # a PACS that never saw the old key still accepts it
    h2, _res2 = login(server, "rad.res.fay", otp_for(server.realm, "rad.res.fay"))
    assert jwt.get_unverified_header(pacs_token(server, h2))["kid"] == new_kid
    exp = jwt.decode(old_token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp + 1 - time.time()))
    with pytest.raises(VerificationError, match="xpired"):
        verifier(server, leeway_seconds=0).verify(old_token)
    time.sleep(max(0.0, rotated_at + MAX_LIFETIME + 1 - time.time()))
    kids = {k["kid"] for k in server.http().get(server.url + "/jwks.json").json()["keys"]}
    assert old_kid not in kids and new_kid in kids
    assert LIFETIME < MAX_LIFETIME
