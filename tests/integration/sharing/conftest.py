"""Fixtures of the sharing tests: the stack's bridge (granian, the example policy with its ``sharing:``
section), its Orthanc with the bridge plugin, Keycloak logins with password + TOTP of the demo
directory (Samba AD realm), the token exchange at the stack's bridge, and the gateway."""

from __future__ import annotations

from typing import Any

import pytest
from share_helpers import ShareStack

from bridge.config import load_config
from bridge.services import Services
from pacs_devstack.realm import AD_REALM


@pytest.fixture(scope="session")
def share_stack(stack: dict[str, Any], directory_ids: dict[str, dict[str, str]]) -> ShareStack:
    for name in ("keycloak", "samba", "bridge", "orthanc"):
        if name not in stack:
            pytest.fail(f"{name} is not part of this dev stack run (sharing needs it)")
    settings = load_config(stack["bridge"]["config"])
    return ShareStack(stack, settings, Services(settings), directory_ids[AD_REALM])
