"""The crash journal is replayed into the audit trail, so whoever can write a file into its
directory could forge audit records: the directory is the bridge's own (0700, even when it existed
before with looser modes), its segments are 0600, and a segment someone else owns, or a symlink,
is never replayed (each test failed before the fix)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.store import db
from bridge.tokens.auditing import BufferedAuditSink, Journal


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(u)
    return u


def _forged_line() -> str:
    event = ev.AuditEvent(AuditEventType.LOGIN_SUCCESS, actor=ev.Actor("chief@idp", "forged.chief"),
                          details={"forged": True})
    return json.dumps(event.to_dict()) + "\n"


def _sink(url: str, journal: Path) -> BufferedAuditSink:
    sink = BufferedAuditSink(AuditStore(db.engine(url)), "https://issuer.test", flush_seconds=3600,
                             journal_dir=journal)
    assert sink.replayed.wait(10)
    return sink


def _forged_stored(url: str) -> bool:
    return any("forged.chief" in str(r) for r in AuditStore(db.engine(url)).tail(50))


def test_a_world_writable_journal_directory_is_made_private(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    journal.chmod(0o777)  # an installer's or an operator's mistake, or a shared spool directory
    sink = _sink(url, journal)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    sink(AuditEventType.TOKEN_EXCHANGED, {"client_id": "c", "subject": "s", "jti": "jti-1"})
    segments = list(journal.glob("*.jsonl"))
    assert segments and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments)


def test_a_segment_writable_by_others_is_not_replayed(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir(mode=0o700)
    forged = journal / "1-1.jsonl"
    forged.write_text(_forged_line())
    forged.chmod(0o666)  # not a segment the bridge wrote (those are 0600)
    _sink(url, journal)
    assert not _forged_stored(url)


def test_a_symlinked_segment_is_not_replayed(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(_forged_line())
    elsewhere.chmod(0o600)
    (journal / "1-1.jsonl").symlink_to(elsewhere)
    _sink(url, journal)
    assert not _forged_stored(url)
    assert elsewhere.exists()  # and never deleted through the link


def test_a_journal_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "journal").symlink_to(real)
    with pytest.raises(RuntimeError, match="journal"):
        Journal(tmp_path / "journal")


def test_an_own_0600_segment_of_a_dead_process_is_still_replayed(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.mkdir(mode=0o700)
    seg = journal / "1-1.jsonl"
    fd = os.open(seg, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, _forged_line().encode())
    os.close(fd)
    _sink(url, journal)
    assert _forged_stored(url)  # the guard is about who wrote it, not what it says
