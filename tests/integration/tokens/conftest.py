"""Fixtures for the token service against the real Keycloak of the dev stack.

The bridge runs in-process (Flask test client) with a fresh SQLite store; Keycloak, the
directories and the logins are real (browserless login helper, TOTP from the demo data).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import BrowserlessLogin
from pacs_devstack.service import StackContext

#: redirect URIs registered in keycloak-realm/hospital-realm.json (never followed by the helper)
REDIRECTS = {
    "pacs-viewer": "https://127.0.0.1:9443/viewer/oidc/callback",
    "pacs-bridge": "https://127.0.0.1:8443/oidc/callback",
}


@pytest.fixture(scope="session")
def kc_info(stack: dict[str, Any]) -> dict[str, Any]:
    if "keycloak" not in stack:
        pytest.skip("keycloak is not part of this dev stack run")
    return dict(stack["keycloak"])


@pytest.fixture(scope="session")
def stack_ctx(stack: dict[str, Any]) -> StackContext:
    return StackContext(ca_file=Path(stack["ca"]["file"]))


@pytest.fixture(scope="session")
def kc_login(kc_info: dict[str, Any], stack_ctx: StackContext) -> Callable[[str, str], BrowserlessLogin]:
    def make(realm: str, client_id: str) -> BrowserlessLogin:
        secret = stack_ctx.secret(kc.CLIENT_SECRET) if client_id == "pacs-bridge" else None
        return BrowserlessLogin(kc_info["url"], realm, client_id, REDIRECTS[client_id],
                                ca_file=str(stack_ctx.ca_file), client_secret=secret)

    return make
