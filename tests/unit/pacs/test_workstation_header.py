"""The workstation address in the plugin's audit events: the gateway's header, trusted only from
the configured gateway addresses (docs/gateway.md, "Header trust")."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.pacs import orthanc_plugin, plugin_config
from bridge.pacs.plugin_config import WORKSTATION_HEADER, PluginConfigError

BASE: dict[str, Any] = {"issuer": "https://b.test", "audience": "pacs", "jwks_url": "https://b.test/jwks.json",
                        "revocation_url": "https://b.test/revocations"}
CFG = plugin_config.build({**BASE, "gateway_addresses": ["10.0.0.5", "fd00::/64"]}, "test", {})


def test_header_from_the_gateway_names_the_workstation() -> None:
    assert CFG.audited_address("10.0.0.5", {WORKSTATION_HEADER: "192.168.7.20"}) == "192.168.7.20"
    assert CFG.audited_address("fd00::1", {WORKSTATION_HEADER.lower(): "2001:db8::7"}) == "2001:db8::7"
    assert CFG.audited_address("::ffff:10.0.0.5", {WORKSTATION_HEADER: "192.168.7.20"}) == "192.168.7.20"


@pytest.mark.parametrize("peer", ["10.0.0.6", "127.0.0.1", "fd01::1", "", "not-an-ip", "10.0.0.5x"])
def test_header_from_any_other_address_is_ignored(peer: str) -> None:
    assert CFG.audited_address(peer, {WORKSTATION_HEADER: "192.168.7.20"}) == peer


@pytest.mark.parametrize("headers", [
    {WORKSTATION_HEADER: "192.168.7.20, 6.6.6.6"},  # a comma-joined repeat
    {WORKSTATION_HEADER: "192.168.7.20", WORKSTATION_HEADER.lower(): "6.6.6.6"},  # twice, two spellings
    {WORKSTATION_HEADER: "not-an-address"},
    {WORKSTATION_HEADER: "192.168.7.20:5555"},
    {WORKSTATION_HEADER: ""},
    {WORKSTATION_HEADER: "192.168.7.20\r\nX: y"},
])
def test_repeated_or_odd_values_are_ignored(headers: dict[str, str]) -> None:
    assert CFG.audited_address("10.0.0.5", headers) == "10.0.0.5"


def test_no_gateway_configured_trusts_nobody() -> None:
    cfg = plugin_config.build(BASE, "test", {})
    assert cfg.audited_address("127.0.0.1", {WORKSTATION_HEADER: "192.168.7.20"}) == "127.0.0.1"


def test_bad_gateway_address_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(PluginConfigError, match="gateway_addresses"):
        plugin_config.build({**BASE, "gateway_addresses": ["not a network"]}, "test", {})


def test_the_filter_hands_the_audited_address_to_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    class FakeGate:
        config = CFG

        def decide(self, uri: str, method: int, headers: Any, get: Any, ip: str) -> bool:
            seen.append(ip)
            return False

    monkeypatch.setattr(orthanc_plugin.HOLDER, "gate", FakeGate())
    monkeypatch.setattr(orthanc_plugin.HOLDER, "current", lambda: FakeGate())
    orthanc_plugin.incoming_http_request_filter("/system", method=1, ip="10.0.0.5",
                                                headers={WORKSTATION_HEADER.lower(): "192.168.7.20"})
    orthanc_plugin.incoming_http_request_filter("/system", method=1, ip="10.9.9.9",
                                                headers={WORKSTATION_HEADER.lower(): "192.168.7.20"})
    assert seen == ["192.168.7.20", "10.9.9.9"]
