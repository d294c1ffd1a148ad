"""Once in a real browser: headless Chromium logs in through the bridge (password + TOTP at
Keycloak) and the PACS token arrives in the viewer redirect URI's fragment."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from oidc_helpers import BridgeServer, otp_for
from sqlalchemy import select

from bridge.core.verifier import Verifier, VerifierConfig
from bridge.store.db import engine, session
from bridge.store.models import RoleAssignment
from pacs_devstack import browser, demo_data, tls
from pacs_devstack.realm import AD_REALM

pytestmark = pytest.mark.integration


def test_chromium_login_receives_pacs_token(
    bridge_servers: object, directory_ids: dict[str, dict[str, str]], tmp_path: Path,
) -> None:
    browser.ensure_installed()  # Debian's chromium + chromium-driver, installed like every stack part
    server: BridgeServer = bridge_servers(AD_REALM)  # type: ignore[operator]
    sub = directory_ids[AD_REALM]["rad.res.gus"]
    with session(engine(server.db_url)) as s:
        if s.scalar(select(RoleAssignment).where(RoleAssignment.subject_id == sub)) is None:
            s.add(RoleAssignment(subject_id=sub, username="rad.res.gus", role="radiologist",
                                 scopes={"departments": ["Radiology"]}))
    certs = [tls.issue("keycloak").cert, tls.issue("bridge-oidc-test").cert]
    with browser.chromium(certs, tmp_path / "profile") as b:
        b.go(f"{server.url}/login?redirect_uri={server.viewer_uri}&state=chromium")
        assert b.wait_for(lambda: b.element("#kc-form-login") is not None), b.url()
        b.fill("#username", "rad.res.gus")
        b.fill("#password", str(demo_data.user("rad.res.gus")["password"]))
        b.click("#kc-login")
        assert b.wait_for(lambda: b.element("#otp") is not None or b.url().startswith(server.viewer_uri)), b.url()
        if not b.url().startswith(server.viewer_uri):
            b.fill("#otp", otp_for(AD_REALM, "rad.res.gus")())
            b.click("#kc-login")
        assert b.wait_for(lambda: b.url().startswith(server.viewer_uri)), b.url()
        final = b.url()
    frag = {k: v[0] for k, v in parse_qs(urlsplit(final).fragment).items()}
    assert frag["state"] == "chromium" and frag["token_type"] == "Bearer"
    v = Verifier(VerifierConfig(issuer=server.url, audience="pacs", jwks_url=server.url + "/jwks.json",
                                ca_file=server.ca_file))
    claims = v.verify(frag["access_token"]).claims
    assert claims["sub"] == sub and claims["acr"] == "mfa"
