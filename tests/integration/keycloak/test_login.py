"""Directory users log in through Keycloak's browser flow; PACS clients get `acr=mfa` only with OTP.

Real servers: Keycloak 26.5 federating Samba AD (realm `hospital`) and OpenLDAP (realm
`hospital-ldap`); the login helper speaks HTTPS to it like a browser would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import BrowserlessLogin, LoginError, fresh_totp
from pacs_devstack.realm import AD_REALM, LDAP_REALM

pytestmark = pytest.mark.integration

TOM = demo_data.DEMO_ACCOUNTS["technologist"]


def otp_for(realm: str, username: str) -> Callable[[], str]:
    return fresh_totp(demo_data.user(username)["totp_secret"], f"{realm}/{username}")


def password(username: str) -> str:
    return str(demo_data.user(username)["password"])


def needs_directory(stack: dict[str, Any], realm: str) -> None:
    directory = kc.REALM_DIRECTORY[realm]
    if directory not in stack:
        pytest.skip(f"{directory} is not part of this dev stack run (realm {realm})")


def test_realm_import_is_clean(keycloak: dict[str, Any]) -> None:
    """Both realms imported, placeholders resolved, no warning or error in the server log."""
    log = Path(keycloak["log"]).read_text(errors="replace")
    # the start-up part only: later login failures of other tests are logged as WARN events
    startup = log.split(" started in ", 1)[0]
    for realm in (AD_REALM, LDAP_REALM):
        assert f"Realm '{realm}' imported" in startup
    bad = [line for line in startup.splitlines() if re.search(r"\b(WARN|ERROR)\b", line)]
    assert not bad, "Keycloak logged warnings/errors while starting:\n" + "\n".join(bad[:20])


@pytest.mark.parametrize(("realm", "username"), [(AD_REALM, "rad.bruno"), (LDAP_REALM, TOM)])
def test_pacs_viewer_login_needs_otp_and_yields_mfa(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin], realm: str, username: str,
) -> None:
    needs_directory(stack, realm)
    client = kc_client(realm, "pacs-viewer")
    result = client.login(username, password(username), otp=otp_for(realm, username))

    assert result.steps == ["kc-form-login", "kc-otp-login-form"]
    access = client.verified_claims(result.access_token, audience="pacs-bridge")
    ident = client.verified_claims(result.id_token, audience="pacs-viewer")
    for claims in (access, ident):
        assert claims["acr"] == "mfa"
        assert {"pwd", "otp"} <= set(claims["amr"])
    assert access["preferred_username"] == username
    assert access["azp"] == "pacs-viewer"
    assert access["exp"] - access["iat"] == 300


def test_refreshed_token_keeps_mfa_and_amr(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    """amr references need a maxAge: with the default 0 they vanish from tokens issued a second later."""
    needs_directory(stack, AD_REALM)
    client = kc_client(AD_REALM, "pacs-bridge")
    user = "card.ines"
    result = client.login(user, password(user), acr_values="mfa", otp=otp_for(AD_REALM, user))
    time.sleep(2)
    res = client._session().post(f"{client.issuer}/protocol/openid-connect/token", timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": result.tokens["refresh_token"]},
        auth=(client.client_id, client.client_secret))
    assert res.status_code == 200, res.text[:200]
    claims = client.verified_claims(res.json()["access_token"], audience="pacs-bridge")
    assert claims["acr"] == "mfa"
    assert {"pwd", "otp"} <= set(claims["amr"])


def test_password_only_login_on_the_bridge_is_not_mfa(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    """The user without OTP logs in to the bridge with a password: a token, but never acr=mfa."""
    needs_directory(stack, AD_REALM)
    client = kc_client(AD_REALM, "pacs-bridge")
    result = client.login(kc.NO_OTP_USER, password(kc.NO_OTP_USER))

    assert result.steps == ["kc-form-login"]
    claims = client.verified_claims(result.access_token, audience="pacs-bridge")
    assert claims["acr"] != "mfa"
    assert "otp" not in claims.get("amr", [])
    assert claims["preferred_username"] == kc.NO_OTP_USER


def test_step_up_from_pwd_to_mfa_asks_only_for_the_otp(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    needs_directory(stack, AD_REALM)
    client = kc_client(AD_REALM, "pacs-bridge")
    browser = client._session()
    user = "rad.chen"
    first = client.login(user, password(user), acr_values="pwd", session=browser)
    assert first.steps == ["kc-form-login"]
    assert client.verified_claims(first.access_token)["acr"] == "pwd"

    second = client.login(user, "not-used", acr_values="mfa", session=browser, otp=otp_for(AD_REALM, user))
    assert second.steps == ["kc-otp-login-form"]  # the SSO session covers the password
    claims = client.verified_claims(second.access_token)
    assert claims["acr"] == "mfa"
    assert {"pwd", "otp"} <= set(claims["amr"])


def test_pacs_viewer_makes_a_user_without_otp_enrol(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    """minimum.acr.value=mfa: no PACS token with a password alone, even when asking for pwd."""
    needs_directory(stack, AD_REALM)
    client = kc_client(AD_REALM, "pacs-viewer")
    with pytest.raises(LoginError, match="enrol"):
        client.login(kc.NO_OTP_USER, password(kc.NO_OTP_USER), acr_values="pwd")


def test_wrong_otp_is_rejected(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    needs_directory(stack, AD_REALM)
    client = kc_client(AD_REALM, "pacs-viewer")
    user = "rad.dana"
    good = otp_for(AD_REALM, user)()
    wrong = f"{(int(good) + 500_000) % 1_000_000:06d}"
    with pytest.raises(LoginError, match="OTP code rejected"):
        client.login(user, password(user), otp=wrong)


def test_wrong_password_is_rejected(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    needs_directory(stack, LDAP_REALM)
    client = kc_client(LDAP_REALM, "pacs-viewer")
    with pytest.raises(LoginError, match="login form shown again"):
        client.login("tech.uma", "Wrong-password-1")


def test_bridge_can_exchange_a_viewer_token(
    stack: dict[str, Any], kc_client: Callable[[str, str], BrowserlessLogin],
) -> None:
    """Standard token exchange (v2): the viewer's token carries aud pacs-bridge, so the bridge may exchange it."""
    needs_directory(stack, AD_REALM)
    viewer = kc_client(AD_REALM, "pacs-viewer")
    user = "tech.uma"
    login = viewer.login(user, password(user), otp=otp_for(AD_REALM, user))
    bridge = kc_client(AD_REALM, "pacs-bridge")
    res = bridge._session().post(f"{bridge.issuer}/protocol/openid-connect/token", timeout=30, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": login.access_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
    }, auth=(bridge.client_id, bridge.client_secret))
    assert res.status_code == 200, res.text[:300]
    claims = bridge.verified_claims(res.json()["access_token"])
    assert claims["azp"] == "pacs-bridge"
    assert claims["sub"] == viewer.verified_claims(login.access_token)["sub"]
