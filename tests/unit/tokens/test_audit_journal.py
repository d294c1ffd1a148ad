"""Token events answered to the client survive a crash of the worker (SIGKILL before the batch
flush): the journal of the dead process is replayed by the next one, once."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bridge.audit.store import AuditStore
from bridge.core.audit_codes import AuditEventType
from bridge.store import db
from bridge.store.models import AuditEventRow
from bridge.tokens.auditing import BufferedAuditSink


def _store(url: str) -> AuditStore:
    return AuditStore(db.engine(url))


def _jtis(url: str) -> set[str]:
    with db.engine(url).connect() as conn:
        bodies = conn.execute(select(AuditEventRow.body).where(AuditEventRow.type == "token.exchanged")).scalars()
        return {j for b in bodies for j in (f"jti-{i}" for i in range(20)) if f'"{j}"' in b}


def _crashing_worker(url: str, journal: str, n: int, ready: Any) -> None:
    sink = BufferedAuditSink(_store(url), "https://issuer.test", flush_seconds=3600, journal_dir=Path(journal))
    for i in range(n):
        sink(AuditEventType.TOKEN_EXCHANGED, {"client_id": "pacs-viewer", "subject": "s", "jti": f"jti-{i}"})
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)  # answered, not flushed: a crash now


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(u)
    return u


def test_events_of_a_killed_worker_are_replayed_once(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_crashing_worker, args=(url, str(journal), 5, ready))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL and ready.is_set()
    assert _jtis(url) == set()  # the crash lost them from memory
    sink = BufferedAuditSink(_store(url), "https://issuer.test", flush_seconds=3600, journal_dir=journal)
    assert sink.replayed.wait(10)  # the flusher replays at start-up
    assert _jtis(url) == {f"jti-{i}" for i in range(5)}
    again = BufferedAuditSink(_store(url), "https://issuer.test", flush_seconds=3600, journal_dir=journal)
    assert again.replayed.wait(10)
    assert again.replay() == 0  # deleted after the replay: never twice
    assert AuditStore(db.engine(url)).verify().ok


def test_flushed_segments_are_deleted_and_a_live_journal_is_not_replayed(url: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    sink = BufferedAuditSink(_store(url), "https://issuer.test", flush_seconds=3600, journal_dir=journal)
    sink(AuditEventType.TOKEN_EXCHANGED, {"client_id": "c", "subject": "s", "jti": "jti-1"})
    other = BufferedAuditSink(_store(url), "https://issuer.test", flush_seconds=3600, journal_dir=journal)
    assert other.replayed.wait(10)
    assert other.replay() == 0  # the first sink is alive (holds its lock): not an orphan
    assert sink.flush() == 1
    assert _jtis(url) == {"jti-1"}
    assert len(list(journal.glob("*.jsonl"))) == 2  # each sink's current (empty) segment only
    assert sink.flush() == 0


def test_store_down_keeps_the_journal(url: str, tmp_path: Path) -> None:
    class Down:
        engine = db.engine(url)

        def append_many(self, events: Any) -> None:
            raise ConnectionError("database down")

    journal = tmp_path / "journal"
    sink = BufferedAuditSink(Down(), "https://issuer.test", flush_seconds=3600, journal_dir=journal)
    sink(AuditEventType.TOKEN_EXCHANGED, {"client_id": "c", "subject": "s", "jti": "jti-2"})
    assert sink.flush() == 0
    assert any(p.read_text() for p in journal.glob("*.jsonl"))  # still on disk, still queued
    sink.store = _store(url)
    assert sink.flush() == 1 and _jtis(url) == {"jti-2"}
    assert not any(p.read_text() for p in journal.glob("*.jsonl"))


def test_a_new_segment_is_locked_before_the_replay_can_see_it(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's replay (`*.jsonl`) runs at any moment; a segment visible to it before its
    creator holds the lock would be taken for a dead process's and deleted under the live writer."""
    import fcntl

    from bridge.tokens import auditing

    seen_unlocked: list[list[str]] = []
    real_flock = fcntl.flock

    def flock(fh: Any, op: int) -> None:
        seen_unlocked.append(sorted(p.name for p in tmp_path.glob("*.jsonl")))  # what a replay sees now
        real_flock(fh, op)

    monkeypatch.setattr(auditing.fcntl, "flock", flock)
    journal = auditing.Journal(tmp_path)
    journal.rotate()
    assert seen_unlocked == [[], [journal.pending[0][1].name]]  # only the first one, locked by then
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == sorted([journal.pending[0][1].name,
                                                                      journal._path.name])
    journal.committed()
    assert [p.name for p in tmp_path.iterdir()] == [journal._path.name]
