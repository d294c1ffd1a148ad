"""Fixtures for the Keycloak tests: the stack's Keycloak and a browserless login per realm/client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pacs_devstack.kc_login import BrowserlessLogin, client_for


@pytest.fixture(scope="session")
def keycloak(stack: dict[str, Any]) -> dict[str, Any]:
    if "keycloak" not in stack:
        pytest.skip("keycloak is not part of this dev stack run")
    return dict(stack["keycloak"])


@pytest.fixture(scope="session")
def kc_client(stack: dict[str, Any], keycloak: dict[str, Any]) -> Callable[[str, str], BrowserlessLogin]:
    """`kc_client(realm, client_id)` -> a BrowserlessLogin (with the secret for pacs-bridge)."""
    return lambda realm, client_id: client_for(stack, realm, client_id)
