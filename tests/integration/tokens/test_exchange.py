"""RFC 8693 exchange against the real Keycloak: an MFA login becomes a PACS token, a password-only
login gets 401 insufficient_user_authentication (RFC 9470)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.store.db import engine, migrate, session
from bridge.store.models import RoleAssignment
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
from pacs_devstack.realm import AD_REALM, LDAP_REALM

pytestmark = pytest.mark.integration

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
ISSUER = "https://127.0.0.1:9443"
REALM_DIRECTORY = kc.REALM_DIRECTORY


def otp_for(realm: str, username: str) -> Callable[[], str]:
    return fresh_totp(demo_data.user(username)["totp_secret"], f"{realm}/{username}")


def password(username: str) -> str:
    return str(demo_data.user(username)["password"])


def needs(stack: dict[str, Any], realm: str) -> None:
    if REALM_DIRECTORY[realm] not in stack:
        pytest.skip(f"{REALM_DIRECTORY[realm]} is not part of this dev stack run")


@pytest.fixture
def bridge_app(kc_info: dict[str, Any], stack: dict[str, Any], tmp_path: Path, request: Any,
               directory_ids: dict[str, dict[str, str]]) -> Iterator[Any]:
    realm = request.param
    needs(stack, realm)
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    with session(engine(url)) as s:  # what the sync would have written: keyed by the directory id
        s.add(RoleAssignment(subject_id=directory_ids[realm]["tech.xia"], username="tech.xia",
                             role="radiologist", scopes={"departments": ["Radiology"]}))
    settings = load_config(
        # the checkpoint key under this test's own KEK, never the checkout's var/
        audit={"checkpoint_key_file": tempfile.mkdtemp(prefix="cp-") + "/cp.key"},
        keycloak={"url": kc_info["url"], "realm": realm, "ca_file": stack["ca"]["file"]},
        store={"url": url},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": ISSUER,
                "clients": [{"client_id": "pacs-viewer"}, {"client_id": "pacs-bridge"}]},
    )
    app = create_app(settings)
    yield realm, app.test_client(), directory_ids


def exchange(client: Any, subject_token: str, client_id: str) -> Any:
    return client.post("/token", data={"grant_type": EXCHANGE, "client_id": client_id,
                                       "subject_token": subject_token, "subject_token_type": AT})


@pytest.mark.parametrize("bridge_app", [AD_REALM, LDAP_REALM], indirect=True)
def test_mfa_login_exchanged_for_pacs_token(
    bridge_app: Any, kc_login: Callable[[str, str], BrowserlessLogin],
) -> None:
    realm, client = bridge_app[:2]
    login = kc_login(realm, "pacs-viewer").login("tech.xia", password("tech.xia"), otp=otp_for(realm, "tech.xia"))
    r = exchange(client, login.access_token, "pacs-viewer")
    assert r.status_code == 200, r.json
    body = r.json
    assert body["issued_token_type"] == AT and body["expires_in"] == 300

    verifier = Verifier(VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=ISSUER + "/jwks.json"),
                        fetch=lambda url, data, headers: client.get(url.removeprefix(ISSUER)).data)
    claims = verifier.verify(body["access_token"]).claims
    assert claims["acr"] == "mfa" and {"pwd", "otp"} <= set(claims["amr"])
    assert claims["roles"] == ["radiologist"] and "view" in claims["permissions"]
    assert claims["grants"] == [{"kind": "role", "role": "radiologist", "scope": {"departments": ["Radiology"]},
                                 "permissions": ["anonymize", "download", "q-r-remote-modalities", "send",
                                                 "share", "view"]}]
    assert claims["preferred_username"] == "tech.xia" and claims["client_id"] == "pacs-viewer"
    assert claims["sub"] == bridge_app[2][realm]["tech.xia"]  # the directory id, as the sync keys it
    assert verifier.authorize("Bearer " + body["access_token"], "GET", "/studies").allow


@pytest.mark.parametrize("bridge_app", [AD_REALM], indirect=True)
def test_password_only_login_gets_step_up_challenge(
    bridge_app: Any, kc_login: Callable[[str, str], BrowserlessLogin],
) -> None:
    realm, client = bridge_app[:2]
    login = kc_login(realm, "pacs-bridge").login(kc.NO_OTP_USER, password(kc.NO_OTP_USER))
    r = exchange(client, login.access_token, "pacs-bridge")
    assert r.status_code == 401
    assert r.json["error"] == "insufficient_user_authentication"
    www = r.headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in www and 'acr_values="mfa"' in www
    assert "access_token" not in json.dumps(r.json)


@pytest.mark.parametrize("bridge_app", [AD_REALM], indirect=True)
def test_id_token_is_not_exchangeable(bridge_app: Any, kc_login: Callable[[str, str], BrowserlessLogin]) -> None:
    realm, client = bridge_app[:2]
    login = kc_login(realm, "pacs-viewer").login("card.ines", password("card.ines"), otp=otp_for(realm, "card.ines"))
    r = exchange(client, login.id_token, "pacs-viewer")
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
