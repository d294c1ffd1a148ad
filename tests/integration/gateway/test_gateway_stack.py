"""The dev stack's gateway wiring: Orthanc reachable on loopback only, the plugin trusting the
workstation header from the gateway's address only."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from gw_browser_helpers import Stack

from pacs_devstack.orthanc import SERVICE as ORTHANC

pytestmark = pytest.mark.integration


def test_gateway_points_at_orthanc_on_loopback_which_refuses_remote_peers(gw_stack: Stack) -> None:
    assert urlsplit(gw_stack.settings.gateway.orthanc_url).hostname == "127.0.0.1"
    config = json.loads(ORTHANC.config_file.read_text())
    # Orthanc 1.10.1 binds every interface; it refuses HTTP from any non-loopback peer
    assert config["RemoteAccessAllowed"] is False
    plugin = json.loads(ORTHANC.plugin_config_file.read_text())
    assert set(plugin["gateway_addresses"]) == {"127.0.0.1/32", "::1/128"}


def test_the_gateway_reaches_orthanc_only_with_a_session(gw_stack: Stack) -> None:
    from bridge.http import pinned_session

    http = pinned_session(gw_stack.info["ca"]["file"])
    r = http.get(gw_stack.gateway + "/studies", timeout=10)
    assert r.status_code == 401
    r = http.get(gw_stack.gateway + "/studies", timeout=10, headers={"Cookie": "__Host-pacs-gateway=" + "A" * 43})
    assert r.status_code == 401
