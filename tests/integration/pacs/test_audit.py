"""Every denial and every study access reaches the bridge's audit trail, or the spool when it is down."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from bridge.core.permissions import Permission as P

pytestmark = pytest.mark.integration


def test_denial_and_access_are_audited(pacs: Any, studies: dict[str, dict[str, str]],
                                       audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    s = studies["P-002"]
    token = pacs.bridge.token([P.VIEW], subject="u-audit-1", username="audit.one")
    for _ in range(20):  # a viewer's burst: one coalesced event, not twenty
        assert pacs.get(f"/studies/{s['study']}", token).status_code == 200
    assert pacs.get(f"/instances/{s['instance']}/file", token).status_code == 403

    def mine(e: dict[str, Any]) -> bool:
        return (e["actor"] or {}).get("username") == "audit.one"

    accessed = audit_events("study.accessed", mine)
    assert accessed, "no study.accessed event"
    deadline = time.monotonic() + 10  # the burst may straddle a flush: wait for the later event(s)
    while sum(e["details"]["requests"] for e in accessed) < 20 and time.monotonic() < deadline:
        time.sleep(0.3)
        accessed = audit_events("study.accessed", mine)
    assert sum(e["details"]["requests"] for e in accessed) == 20
    assert len(accessed) < 20
    ids = {(o["kind"], o["id"]) for o in accessed[0]["objects"]}
    assert ("study", s["study_uid"]) in ids and ("patient", "P-002") in ids
    denied = audit_events("access.denied", lambda e: mine(e) and e["details"]["permission"] == "download")
    assert denied and "missing permission download" in denied[0]["details"]["reason"]
    assert all("eyJ" not in json.dumps(e) for e in pacs.bridge.audit_events), "a token leaked into audit"


def test_anonymous_denial_is_audited(pacs: Any, audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    assert pacs.get("/studies?probe=anonymous-audit").status_code == 403
    assert audit_events("access.denied", lambda e: e["details"]["reason"] == "no Authorization header")


def test_events_are_spooled_while_the_bridge_is_down(
    pacs: Any, studies: dict[str, dict[str, str]], audit_events: Callable[..., list[dict[str, Any]]]
) -> None:
    token = pacs.bridge.token([P.VIEW], subject="u-spool", username="spool.user")
    pacs.bridge.audit_down = True
    try:
        assert pacs.get(f"/studies/{studies['P-003']['study']}", token).status_code == 200
        deadline = time.monotonic() + 10
        spooled: list[dict[str, Any]] = []
        while not spooled and time.monotonic() < deadline:
            time.sleep(0.3)
            for f in pacs.spool_dir.glob("*.jsonl"):
                raw = f.read_bytes()
                assert b"spool.user" not in raw and b"P-003" not in raw, "the spool holds a user or patient in clear"
                spooled += [e for e in (json.loads(_unseal(pacs, x)) for x in raw.splitlines() if x.strip())
                            if "spool.user" in json.dumps(e)]
        assert spooled, "nothing spooled while the bridge was down"
        assert oct(next(pacs.spool_dir.glob("*.jsonl")).stat().st_mode & 0o777) == "0o600"
    finally:
        pacs.bridge.audit_down = False
    got = audit_events("study.accessed", lambda e: (e["actor"] or {}).get("username") == "spool.user",
                       timeout=15)
    assert got, "spooled events were not replayed once the bridge answered again"
    assert not [f for f in pacs.spool_dir.glob("*.jsonl") if "spool.user" in f.read_text()]


def _unseal(pacs: Any, line: bytes) -> bytes:
    """A spool line, sealed under the Orthanc host's storage KEK (the encrypted store is on)."""
    from bridge.core import envelope, sealed
    from bridge.pacs.audit_shipper import SPOOL_LINE_NAME

    keys = envelope.FileKeyProvider(pacs.settings["storage"]["kek_file"])
    return sealed.open_line(keys, SPOOL_LINE_NAME, sealed.PLUGIN_AUDIT_SPOOL, line)
