"""Faults of servers only the bridge uses, each really stopped and restarted mid-run: the audit
collector (rsyslog: messages wait in the spool, then arrive once each) and both bridge instances
(a PACS verifier keeps deciding with its cached keys until the revocation list is too stale, then
fails closed, and recovers when the bridge is back)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from ha_helpers import mfa_tokens, need, restored, stop, wait_states

from bridge.core.errors import VerificationError
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.http import pinned_session
from pacs_devstack import ha_load
from pacs_devstack.bridge import INSTANCES

pytestmark = pytest.mark.integration


def _lines(path: Path, marker: str) -> list[str]:
    return [x for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if marker in x]


def _wait_lines(path: Path, marker: str, n: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(_lines(path, marker)) < n:
        time.sleep(0.2)
    return _lines(path, marker)


def test_rsyslog_down_messages_wait_in_the_spool(stack: dict[str, Any], tmp_path: Path) -> None:
    need(stack, "rsyslog")
    from bridge.audit.syslog import SyslogSender, SyslogTarget
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType

    info = stack["rsyslog"]
    received = Path(info["received_file"])
    marker = f"ha-spool-{uuid.uuid4().hex}"
    sender = SyslogSender(SyslogTarget(info["host"], int(info["port"]), Path(info["ca_file"]), "localhost", 2,
                                       Path(info["client_cert_file"]), Path(info["client_key_file"])),
                          tmp_path / "spool")

    def event(i: int) -> Any:
        return ev.AuditEvent(AuditEventType.LOGIN_FAILURE, actor=ev.Actor("s@i", "ha.test", "viewer", "127.0.0.1"),
                             correlation_id=marker, details={"n": i})

    sender.enqueue(event(1), seq=1)
    assert sender.flush() == 1
    assert len(_wait_lines(received, marker, 1)) == 1
    with restored(stack, "rsyslog"):
        stop("rsyslog")
        for i in (2, 3, 4):
            sender.enqueue(event(i), seq=i)
        assert sender.flush() == 0  # the collector is down: nothing lost, everything spooled
        assert len(sender.pending()) >= 1
    # restored: the collector is back on its port; the spool drains
    assert sender.flush() == 3
    assert sender.pending() == []
    lines = _wait_lines(received, marker, 4)
    assert len(lines) == 4, lines  # each exactly once


def test_both_bridges_down_verifier_uses_cached_keys_then_fails_closed(stack: dict[str, Any],
                                                                       ha: dict[str, Any]) -> None:
    """The PACS side (the verifier library the Orthanc plugin runs) with both instances gone."""
    subject = mfa_tokens(stack, ("card.maya",))[0]
    http = pinned_session(ha["ca"])
    r = http.post(f"{ha['url']}/token", timeout=10, data={
        "grant_type": ha_load.EXCHANGE, "client_id": "pacs-viewer", "subject_token_type": ha_load.ACCESS_TOKEN,
        "subject_token": subject})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    stale_after = 8.0
    verifier = Verifier(VerifierConfig(
        issuer=ha["url"], audience="pacs", jwks_url=f"{ha['url']}/jwks.json", ca_file=ha["ca"],
        revocation_url=f"{ha['url']}/revocations", revocation_refresh_seconds=0.5,
        revocation_max_stale_seconds=stale_after, http_timeout_seconds=1.0))
    assert verifier.verify(token).claims["sub"]
    with restored(stack, "bridge", "bridge2"):
        assert verifier.verify(token).claims["sub"]  # the list was just pulled
        down_at = time.monotonic()
        for instance in INSTANCES:
            instance.kill()  # SIGKILL: both gone at once, as in a crash of their host
        assert http.get(f"{ha['url']}/readyz", timeout=5).status_code == 503  # HAProxy: no server
        # keys cached, revocation list younger than the limit: still decides, and decides right
        assert verifier.verify(token).claims["sub"]
        with pytest.raises(VerificationError):
            verifier.verify(token[:-6] + "AAAAAA")
        time.sleep(max(0.0, stale_after + 0.5 - (time.monotonic() - down_at)))
        with pytest.raises(VerificationError, match="revocation"):
            verifier.verify(token)  # too stale: fails closed
    wait_states({"bridge": "UP", "bridge2": "UP"})
    time.sleep(0.6)  # the next refresh attempt is due
    assert verifier.verify(token).claims["sub"]  # the bridge is back: decisions resume


def test_both_bridges_down_orthanc_plugin_decides_then_fails_closed(stack: dict[str, Any],
                                                                    ha: dict[str, Any]) -> None:
    """The same through the real Orthanc and its bridge plugin (pointed at HAProxy by the stack)."""
    need(stack, "orthanc")
    import json

    import requests

    info = stack["orthanc"]
    config = Path(info["plugin_config"])
    original = config.read_text(encoding="utf-8")
    stale_after = 8.0
    settings = {**json.loads(original), "revocation_refresh_seconds": 0.5,
                "revocation_max_stale_seconds": stale_after}
    assert settings["issuer"] == ha["url"]  # the plugin trusts the bridge through HAProxy
    subject = mfa_tokens(stack, ("tech.vic",))[0]  # an unscoped role: /tools/now is cross-study
    r = pinned_session(ha["ca"]).post(f"{ha['url']}/token", timeout=10, data={
        "grant_type": ha_load.EXCHANGE, "client_id": "pacs-viewer", "subject_token_type": ha_load.ACCESS_TOKEN,
        "subject_token": subject})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]

    def status() -> int:
        return requests.get(f"{info['url']}/tools/now", headers={"Authorization": f"Bearer {token}"},
                            timeout=10, verify=info["ca_file"]).status_code

    def wait_for(want: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        got = status()
        while got != want and time.monotonic() < deadline:
            time.sleep(0.3)
            got = status()
        return got

    try:
        config.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        time.sleep(2.5)  # > reload_check_seconds: the plugin re-reads its settings
        assert wait_for(200) == 200
        with restored(stack, "bridge", "bridge2"):
            assert status() == 200
            down_at = time.monotonic()
            for instance in INSTANCES:
                instance.kill()
            assert status() == 200  # cached keys and a fresh-enough revocation list: still decides
            time.sleep(max(0.0, stale_after + 1.0 - (time.monotonic() - down_at)))
            refused = status()
            assert refused in (401, 403, 503), refused  # too stale: fails closed
    finally:
        config.write_text(original, encoding="utf-8")
    wait_states({"bridge": "UP", "bridge2": "UP"})
    assert wait_for(200) == 200  # the bridge is back: the plugin decides again
