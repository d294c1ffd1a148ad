"""Audit messages reach the real rsyslog collector over TLS, in order, exactly once, even when the
collector was down at first."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collector(stack):
    if "rsyslog" not in stack:
        pytest.skip("rsyslog is not part of this dev stack run (PACS_BRIDGE_DEVSTACK_ONLY)")
    return stack["rsyslog"]


def _received(path: Path, marker: str) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if marker in line]


def _wait_for(path: Path, marker: str, n: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _received(path, marker)
        if len(lines) >= n:
            return lines
        time.sleep(0.2)
    return _received(path, marker)


def test_down_then_up_delivers_each_event_once_in_order(collector, tmp_path):
    import uuid

    from bridge.audit.syslog import SyslogSender, SyslogTarget
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType
    from pacs_devstack.state import free_port

    marker = f"corr-{uuid.uuid4().hex}"
    events = [
        ev.AuditEvent(
            AuditEventType.LOGIN_FAILURE,
            actor=ev.Actor("s@i", "rad.alice", "viewer", "127.0.0.1"),
            correlation_id=marker,
            details={"attempt": i},
        )
        for i in range(5)
    ]
    spool = tmp_path / "spool"
    # 1. collector unreachable (nothing listens on this port): everything stays spooled
    down = SyslogSender(SyslogTarget("127.0.0.1", free_port(), Path(collector["ca_file"]), "localhost", 2), spool)
    for i, e in enumerate(events):
        down.enqueue(e, seq=i + 1)
    assert down.flush() == 0 and len(down.pending()) == 5
    # 2. the collector is there: one flush delivers all, in order; later flushes send nothing again
    up = SyslogSender(
        SyslogTarget(collector["host"], int(collector["port"]), Path(collector["ca_file"]), "localhost", 5), spool
    )
    assert up.flush() == 5
    assert up.pending() == [] and up.flush() == 0
    received = Path(collector["received_file"])
    lines = _wait_for(received, marker, 5)
    time.sleep(1)
    lines = _received(received, marker)
    assert len(lines) == 5, lines
    seqs = [int(line.split('seq="')[1].split('"')[0]) for line in lines]
    assert seqs == [1, 2, 3, 4, 5]
    ids = [line.split('eventID="')[1].split('"')[0] for line in lines]
    assert ids == [e.event_id for e in events]
    assert all(line.startswith("<85>1 ") and "IHE+RFC-3881" in line and "<AuditMessage>" in line for line in lines)


def test_untrusted_collector_certificate_is_refused(collector, tmp_path):
    from bridge.audit.syslog import SyslogSender, SyslogTarget
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType

    sender = SyslogSender(
        SyslogTarget(collector["host"], int(collector["port"]), None, "localhost", 5), tmp_path / "spool"
    )  # system CAs only: the dev CA is not trusted
    sender.enqueue(ev.AuditEvent(AuditEventType.LOGOUT))
    assert sender.flush() == 0 and len(sender.pending()) == 1
