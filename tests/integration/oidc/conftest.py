"""Session fixtures of the browser-login tests: one bridge server per realm (see oidc_helpers)."""

from __future__ import annotations

import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from keycloak import KeycloakAdmin
from oidc_helpers import (
    LIFETIME,
    MAX_LIFETIME,
    VIEWER_PATH,
    BridgeServer,
    _repoint_client,
    _viewer_page,
    restore_backchannel_url,
)
from werkzeug.serving import make_server

from bridge.config import load_config
from bridge.store.db import migrate
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import keycloak as kc
from pacs_devstack import tls
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext
from pacs_devstack.state import free_port


def _admin(stack: dict[str, Any], realm: str) -> KeycloakAdmin:
    """The dev stack's admin client on ``realm`` (python-keycloak; it renews its own token)."""
    if "keycloak" not in stack:
        pytest.skip("keycloak is not part of this dev stack run")
    return kc.stack_admin(stack, realm)


@pytest.fixture
def kc_admin(stack: dict[str, Any]) -> KeycloakAdmin:
    """An admin client on the AD realm."""
    return _admin(stack, AD_REALM)


@pytest.fixture(scope="session")
def bridge_servers(
    stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], BridgeServer]]:
    """``get(realm)``: the bridge server for that realm (started on first use)."""
    ctx = StackContext(ca_file=Path(stack["ca"]["file"]))
    running: dict[str, tuple[BridgeServer, Any, str | None]] = {}

    def get(realm: str) -> BridgeServer:
        if kc.REALM_DIRECTORY[realm] not in stack:
            pytest.skip(f"{kc.REALM_DIRECTORY[realm]} is not part of this dev stack run")
        if realm in running:
            return running[realm][0]
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        db_url = f"sqlite:///{tmp_path_factory.mktemp('bridge-' + realm)}/bridge.db"
        migrate(db_url)
        settings = load_config(
            # the checkpoint key under this test's own KEK, never the checkout's var/
            audit={"checkpoint_key_file": tempfile.mkdtemp(prefix="cp-") + "/cp.key"},
            bridge={"public_url": url, "session_secret": secrets.token_urlsafe(32),
                    "viewer_redirect_uris": [url + VIEWER_PATH]},
            keycloak={"url": stack["keycloak"]["url"], "realm": realm, "ca_file": stack["ca"]["file"],
                      "client_secret": ctx.secret(kc.CLIENT_SECRET),
                      "admin_password": ctx.secret(kc.ADMIN_SECRET)},
            store={"url": db_url},
            # the browser login is the gateway's; these tests never reach Orthanc through it
            gateway={"orthanc_url": stack.get("orthanc", {}).get("url") or "https://127.0.0.1:9",
                     "orthanc_ca_file": stack["ca"]["file"]},
            tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": url,
                    "lifetime_seconds": LIFETIME, "max_lifetime_seconds": MAX_LIFETIME,
                    "clients": [{"client_id": "pacs-viewer"},
                                {"client_id": "pacs", "client_secret": "introspect-secret",
                                 "may_introspect": True}]},
        )
        app = create_app(settings, config={"PACS_BRIDGE_RATE_LOGIN": "1000/minute"})
        app.add_url_rule(VIEWER_PATH, "viewer", _viewer_page)
        pair = tls.issue("bridge-oidc-test")
        server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=(str(pair.cert), str(pair.key)))
        threading.Thread(target=server.serve_forever, name=f"bridge-{realm}", daemon=True).start()
        old = _repoint_client(_admin(stack, realm), url)
        running[realm] = (BridgeServer(realm, url, app, str(pair.ca), db_url), server, old)
        return running[realm][0]

    yield get
    for realm, (_b, server, old) in running.items():
        server.shutdown()
        restore_backchannel_url(_admin(stack, realm), old)


