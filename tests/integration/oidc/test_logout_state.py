"""Logout against the real Keycloak: a Keycloak access token issued before the logout can no longer be
exchanged, and a logout token replayed to the *other* web server worker of the dev stack's bridge is
refused (the replay state is in the database, not in one worker's memory)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from keycloak import KeycloakAdmin
from oidc_helpers import (
    BridgeServer,
    _repoint_client,
    db_engine,
    logout_user,
    otp_for,
    restore_backchannel_url,
)
from werkzeug.serving import make_server

from bridge.http import pinned_session
from bridge.store.db import write_session
from bridge.store.models import RoleAssignment
from pacs_devstack import demo_data, tls
from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import BrowserlessLogin
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext
from pacs_devstack.state import free_port

pytestmark = pytest.mark.integration

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
#: registered for pacs-bridge in keycloak-realm/hospital-realm.json (never followed by the helper)
BRIDGE_REDIRECT = "https://127.0.0.1:8443/oidc/callback"


def bridge_client_login(stack: dict[str, Any], username: str) -> Any:
    """A password + TOTP login with the ``pacs-bridge`` client: Keycloak then holds a client session
    for it and sends that client a logout token when the user is logged out."""
    ctx = StackContext(ca_file=Path(stack["ca"]["file"]))
    login = BrowserlessLogin(stack["keycloak"]["url"], AD_REALM, "pacs-bridge", BRIDGE_REDIRECT,
                             ca_file=stack["ca"]["file"], client_secret=ctx.secret(kc.CLIENT_SECRET))
    return login.login(username, str(demo_data.user(username)["password"]), otp=otp_for(AD_REALM, username),
                       acr_values="mfa")  # what the bridge's own login asks for (step-up)


def test_keycloak_token_from_before_logout_is_not_exchanged(
    stack: dict[str, Any], bridge_servers: Any, directory_ids: dict[str, dict[str, str]], kc_admin: KeycloakAdmin,
) -> None:
    server: BridgeServer = bridge_servers(AD_REALM)
    user = "er.nina"
    sub = directory_ids[AD_REALM][user]
    with write_session(db_engine(server)) as s:
        s.add(RoleAssignment(subject_id=sub, username=user, role="radiologist", scopes={"departments": ["ER"]}))
    subject_token = bridge_client_login(stack, user).access_token
    http = server.http()

    def exchange() -> Any:
        return http.post(server.url + "/token", data={"grant_type": EXCHANGE, "client_id": "pacs-viewer",
                                                      "subject_token": subject_token, "subject_token_type": AT})

    assert exchange().status_code == 200
    logout_user(kc_admin, user)  # Keycloak calls the bridge's back-channel logout
    deadline = time.time() + 15
    while time.time() < deadline:
        if sub in {e["sub"] for e in http.get(server.url + "/revocations").json().get("subjects", [])}:
            break
        time.sleep(0.3)
    else:
        pytest.fail("Keycloak's back-channel logout did not reach the bridge")
    r = exchange()  # the Keycloak access token itself is still unexpired and correctly signed
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# --------------------------------------------------------------------------- replay to another worker


@contextmanager
def capture_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTPS endpoint (dev CA) that records the logout tokens Keycloak POSTs to it."""
    got: list[str] = []
    app = Flask("capture")

    @app.post("/backchannel-logout")
    def take() -> tuple[str, int]:
        got.append(request.form.get("logout_token", ""))
        return "", 200

    port = free_port()
    pair = tls.issue("logout-capture-test")
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=(str(pair.cert), str(pair.key)))
    threading.Thread(target=server.serve_forever, name="logout-capture", daemon=True).start()
    try:
        yield f"https://127.0.0.1:{port}", got
    finally:
        server.shutdown()


def test_logout_token_replayed_to_another_instance_is_refused(
    stack: dict[str, Any], kc_admin: KeycloakAdmin,
) -> None:
    if "bridge2" not in stack or "samba" not in stack:
        pytest.skip("needs the dev stack's two bridge instances and the AD realm")
    bridge_url, ca = stack["bridge"]["url"], stack["ca"]["file"]
    user = "er.omar"
    with capture_server() as (capture_url, got):
        old = _repoint_client(kc_admin, capture_url)
        try:
            bridge_client_login(stack, user)
            logout_user(kc_admin, user)
            deadline = time.time() + 15
            while not got and time.time() < deadline:
                time.sleep(0.2)
        finally:
            restore_backchannel_url(kc_admin, old)
    assert got and got[0].count(".") == 2, "Keycloak sent no logout token"
    logout_token = got[0]
    # the token goes to one bridge instance and the replay to the other (two processes, two worker
    # pools, one database): only state kept in the database can refuse the replay
    first_url = stack["bridge"].get("instance_url", bridge_url)
    other_url = stack["bridge2"].get("instance_url")
    r = pinned_session(ca).post(first_url + "/backchannel-logout", data={"logout_token": logout_token}, timeout=10)
    assert r.status_code == 200, r.text
    replay = pinned_session(ca).post(other_url + "/backchannel-logout", data={"logout_token": logout_token},
                                     timeout=10)
    assert replay.status_code == 400, replay.text  # the other instance never saw the token itself
    assert "replayed" in replay.json()["error_description"]
