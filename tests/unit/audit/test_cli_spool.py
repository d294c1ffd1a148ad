"""CLI `audit verify` exit codes, and the syslog spool keeping messages while the collector is away."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import text

from bridge.audit.keys import CheckpointKey
from bridge.audit.store import open_store
from bridge.audit.syslog import SyslogSender, SyslogTarget
from bridge.cli import main
from bridge.config import load_config
from bridge.kek import KeyEncryptor
from bridge.store import db
from pacs_devstack.state import free_port


def test_audit_verify_cli(tmp_path, monkeypatch, make_event):
    url = f"sqlite:///{tmp_path}/a.db"
    monkeypatch.setenv("PACS_BRIDGE_STORE__URL", url)
    monkeypatch.setenv("PACS_BRIDGE_AUDIT__CHECKPOINT_KEY_FILE", str(tmp_path / "cp.key"))
    monkeypatch.setenv("PACS_BRIDGE_TOKENS__KEY_ENCRYPTION_KEY", KeyEncryptor.generate_secret())
    db.migrate(url)
    store = open_store(load_config())
    store.append_many([make_event(i) for i in range(5)])
    assert isinstance(store.key, CheckpointKey) and (tmp_path / "cp.key.pub").exists()
    res = CliRunner().invoke(main, ["audit", "verify"])
    assert res.exit_code == 0 and "audit trail OK" in res.output
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET type = 'login.success' WHERE seq = 3"))
    res = CliRunner().invoke(main, ["audit", "verify"])
    assert res.exit_code == 1
    assert "edited at record 3" in res.output
    res = CliRunner().invoke(main, ["audit", "query", "--patient", "PAT1", "--format", "csv"])
    assert res.exit_code == 0 and res.output.count("PAT1") >= 1
    res = CliRunner().invoke(main, ["audit", "query", "--type", "nope"])
    assert res.exit_code == 2 and "unknown event type" in res.output


def test_spool_keeps_messages_in_order_while_collector_is_down(tmp_path, make_event):
    sender = SyslogSender(SyslogTarget("127.0.0.1", free_port(), timeout=1), tmp_path / "spool")
    for i in range(3):
        sender.enqueue(make_event(i), seq=i + 1)
    assert sender.flush() == 0
    files = sender.pending()
    assert [f.name for f in files] == sorted(f.name for f in files) and len(files) == 3
    assert b'seq="1"' in files[0].read_bytes()
    # a restarted sender continues the numbering after what is still spooled
    again = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool")
    assert again.enqueue(make_event(9)).name == f"{4:020d}.msg"
