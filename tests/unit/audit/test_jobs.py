"""The jobs `serve` runs: timed checkpoints, retention archive, spool draining; open_store wiring."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from bridge.audit import jobs
from bridge.audit.archive import verify_archive
from bridge.audit.store import open_store
from bridge.audit.syslog import SyslogSender, SyslogTarget
from bridge.config import load_config
from bridge.kek import KeyEncryptor
from bridge.store import db
from pacs_devstack.state import free_port


def settings_for(tmp_path: Path, **audit: object):
    url = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(url)
    return load_config(store={"url": url}, tokens={"key_encryption_key": KeyEncryptor.generate_secret()},
                       audit={"checkpoint_key_file": str(tmp_path / "cp.key"),
                                                  "spool_dir": str(tmp_path / "spool"),
                                                  "archive_dir": str(tmp_path / "archive"), **audit})


def test_open_store_signs_checkpoints(tmp_path, make_event):
    store = open_store(settings_for(tmp_path, checkpoint_every=2))
    assert store.key is not None and store.key.private is not None
    store.append_many([make_event(i) for i in range(3)])
    rep = store.verify()
    assert rep.ok and rep.checkpoints == 1 and rep.signatures_checked


def test_ship_spools_each_new_record_once_and_keeps_them_while_the_collector_is_down(tmp_path, make_event):
    settings = settings_for(tmp_path, syslog_host="127.0.0.1", syslog_port=free_port())
    store = open_store(settings)
    store.append_many([make_event(i) for i in range(3)])
    sender = SyslogSender(SyslogTarget("127.0.0.1", settings.audit.syslog_port, timeout=1), settings.audit.spool_dir)
    assert jobs.ship(store, sender) == 0  # collector down
    store.append(make_event(7))
    assert jobs.ship(store, sender) == 0
    data = b"".join(p.read_bytes() for p in sender.pending())
    assert [data.count(f'seq="{i}"'.encode()) for i in range(1, 5)] == [1, 1, 1, 1]
    assert jobs.ship(store, None) == 0


def test_timed_checkpoint_only_when_new_records(tmp_path, make_event):
    store = open_store(settings_for(tmp_path))
    assert jobs.checkpoint(store) is None  # empty chain
    store.append(make_event(1))
    cp = jobs.checkpoint(store)
    assert cp is not None and cp["seq"] == 1 and cp["kind"] == "timer"
    assert jobs.checkpoint(store) is None  # already covered
    store.append(make_event(2))
    assert jobs.checkpoint(store)["seq"] == 2
    assert store.verify().checkpoints == 2


def test_retention_archives_old_records_and_records_that_it_did(tmp_path, make_event):
    settings = settings_for(tmp_path, retention_days=30)
    store = open_store(settings)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    store.append_many([dataclasses.replace(make_event(i), time=old) for i in range(3)])
    store.append(make_event(9))
    path = jobs.retention(store, 30, settings.audit.archive_dir)
    assert path is not None and verify_archive(path, store.key, store.file_keys).ok  # sealed under the KEK
    rows = store.query()
    assert [r["type"] for r in rows] == ["study.accessed", "audit.log_used"]
    assert store.verify().ok
    assert jobs.retention(store, 30, settings.audit.archive_dir) is None  # nothing more to do


def test_run_once_ships_what_other_writers_recorded(tmp_path, make_event):
    """Writers only append to the database; serve's job spools and sends (collector down: kept)."""
    settings = settings_for(tmp_path, syslog_host="127.0.0.1", syslog_port=free_port())
    open_store(settings).append(make_event(1))
    shipper = SyslogSender(SyslogTarget("127.0.0.1", settings.audit.syslog_port, timeout=1), settings.audit.spool_dir)
    jobs.run_once(settings, open_store(settings), shipper)
    assert len(shipper.pending()) == 1  # collector down: nothing lost


def test_spool_numbers_are_unique_across_writers(tmp_path, make_event):
    a = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool")
    b = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool")
    names = [s.enqueue(make_event(i)).name for i, s in enumerate([a, b, a, b, b, a])]
    assert len(set(names)) == 6 and names == sorted(names)


def test_schedule_adds_the_jobs(tmp_path):
    from apscheduler.schedulers.background import BackgroundScheduler

    settings = settings_for(tmp_path, syslog_host="127.0.0.1")
    sched = BackgroundScheduler()
    ids = jobs.schedule(sched, settings, open_store(settings), SyslogSender(SyslogTarget("127.0.0.1", 1),
                                                                         tmp_path / "s"))
    assert ids == ["audit-ship", "audit-checkpoint", "audit-retention"]
    assert {j.id for j in sched.get_jobs()} == set(ids)
