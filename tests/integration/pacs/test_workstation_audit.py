"""The workstation's address in the plugin's audit events: the gateway's header is believed only
from the configured gateway addresses (real Orthanc, real plugin; issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge.core.permissions import Permission as P
from bridge.pacs.plugin_config import WORKSTATION_HEADER

pytestmark = pytest.mark.integration


def test_workstation_header_is_believed_only_from_the_gateway(
    pacs: Any, studies: dict[str, dict[str, str]], audit_events: Callable[..., list[dict[str, Any]]],
) -> None:
    s = studies["P-001"]

    def address_of(username: str) -> set[str]:
        found = audit_events("study.accessed", lambda e: (e["actor"] or {}).get("username") == username)
        assert found, f"no study.accessed event of {username}"
        return {(e["actor"] or {}).get("network_address") for e in found}

    # no gateway configured: a client naming a workstation is not believed
    t1 = pacs.bridge.token([P.VIEW], subject="u-ws-1", username="ws.one")
    assert pacs.get(f"/studies/{s['study']}", t1, headers={WORKSTATION_HEADER: "10.77.0.1"}).status_code == 200
    assert address_of("ws.one") == {"127.0.0.1"}
    try:
        pacs.write_settings(gateway_addresses=["127.0.0.1/32", "::1/128"])
        t2 = pacs.bridge.token([P.VIEW], subject="u-ws-2", username="ws.two")
        assert pacs.get(f"/studies/{s['study']}", t2, headers={WORKSTATION_HEADER: "10.77.0.2"}).status_code == 200
        assert address_of("ws.two") == {"10.77.0.2"}
        # from the gateway, but not one address: the peer is recorded
        t3 = pacs.bridge.token([P.VIEW], subject="u-ws-3", username="ws.three")
        assert pacs.get(f"/studies/{s['study']}", t3,
                        headers={WORKSTATION_HEADER: "10.77.0.3, 6.6.6.6"}).status_code == 200
        assert address_of("ws.three") == {"127.0.0.1"}
    finally:
        pacs.write_settings(gateway_addresses=[])
