"""Fixtures for the Keycloak tests: the stack's Keycloak and a browserless login per realm/client."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.devstack import keycloak as kc
from bridge.devstack.kc_login import BrowserlessLogin
from bridge.devstack.service import StackContext

#: redirect URIs registered in keycloak-realm/hospital-realm.json (never followed by the helper)
REDIRECTS = {
    "pacs-viewer": "https://127.0.0.1:9443/viewer/oidc/callback",
    "pacs-bridge": "https://127.0.0.1:8443/oidc/callback",
}


@pytest.fixture(scope="session")
def keycloak(stack: dict[str, Any]) -> dict[str, Any]:
    if "keycloak" not in stack:
        pytest.skip("keycloak is not part of this dev stack run")
    return dict(stack["keycloak"])


@pytest.fixture(scope="session")
def ctx(stack: dict[str, Any]) -> StackContext:
    return StackContext(ca_file=Path(stack["ca"]["file"]))


@pytest.fixture(scope="session")
def kc_client(keycloak: dict[str, Any], ctx: StackContext) -> Callable[[str, str], BrowserlessLogin]:
    """`kc_client(realm, client_id)` -> a BrowserlessLogin (with the secret for pacs-bridge)."""

    def make(realm: str, client_id: str) -> BrowserlessLogin:
        secret = ctx.secret(kc.CLIENT_SECRET) if client_id == "pacs-bridge" else None
        return BrowserlessLogin(keycloak["url"], realm, client_id, REDIRECTS[client_id],
                                ca_file=str(ctx.ca_file), client_secret=secret)

    return make
