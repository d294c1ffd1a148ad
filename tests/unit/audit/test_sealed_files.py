"""The audit files the bridge and the plugin keep on disk are sealed (bridge/core/sealed.py):
the syslog spool, retention archives, the token service's crash journal and the plugin's audit
spool hold no patient ID, name or user name in clear; each still delivers / verifies / replays;
an altered or renamed file does not open (and is set aside, never sent half-read); files written
before sealing are still read; a KEK rotation re-wraps the long-lived ones."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.audit.archive import verify_archive
from bridge.audit.store import open_store
from bridge.audit.syslog import SyslogSender, SyslogTarget, split_frames
from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core import envelope, sealed
from bridge.core.audit_codes import AuditEventType
from bridge.kek import AUDIT_FILES_PURPOSE, KekKeyProvider, KeyEncryptor, audit_file_keys
from bridge.kek_rotation import rewrap
from bridge.pacs.audit_shipper import AuditShipper
from bridge.store import db
from bridge.tokens.auditing import Journal
from pacs_devstack.state import free_port

KEK = KeyEncryptor.generate_secret()


def sample_event(i: int) -> ev.AuditEvent:
    return ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor(username="rad.alice"),
                         objects=(ev.patient(f"PAT{i}", "Doe^Jane"),), correlation_id=f"req-{i}")
SECRETS = (b"PAT1", b"Doe^Jane", b"rad.alice")


def _settings(tmp: Path, kek: str = KEK, previous: str | None = None) -> Any:
    tokens = {"key_encryption_key": kek, **({"previous_key_encryption_key": previous} if previous else {})}
    return load_config(store={"url": f"sqlite:///{tmp}/bridge.db"}, tokens=tokens,
                       audit={"checkpoint_key_file": str(tmp / "cp.key"), "checkpoint_every": 3,
                              "spool_dir": str(tmp / "spool"), "archive_dir": str(tmp / "archive")})


def _clear(data: bytes) -> list[bytes]:
    return [s for s in SECRETS if s in data]


def test_the_syslog_spool_is_sealed_and_still_delivers_its_frames(tmp_path: Path) -> None:
    keys = audit_file_keys(_settings(tmp_path))
    sender = SyslogSender(SyslogTarget("127.0.0.1", free_port(), timeout=1), tmp_path / "spool", keys=keys)
    sender.enqueue(sample_event(1), seq=1)
    (path,) = sender.pending()
    raw = path.read_bytes()
    assert sealed.is_sealed(raw) and _clear(raw) == []
    frames = split_frames(sender._unseal(path))
    assert len(frames) == 1 and b"PAT1" in frames[0]
    assert sender.flush() == 0 and sender.pending() == [path]  # collector down: kept, still sealed
    # a half-sent file is rewritten sealed too
    sender._keep(path, frames)
    assert sealed.is_sealed(path.read_bytes())


def test_an_altered_spool_file_is_set_aside_never_sent_or_deleted(tmp_path: Path) -> None:
    keys = audit_file_keys(_settings(tmp_path))
    sender = SyslogSender(SyslogTarget("127.0.0.1", 1, timeout=1), tmp_path / "spool", keys=keys)
    path = sender.enqueue(sample_event(1), seq=1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    assert sender._unseal(path) is None
    assert not path.exists() and path.with_suffix(".damaged").exists()
    other = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool2",
                         keys=KekKeyProvider(KeyEncryptor.from_secret(KeyEncryptor.generate_secret()),
                                             AUDIT_FILES_PURPOSE))
    moved = other.spool / path.name
    path.with_suffix(".damaged").rename(moved)  # sealed under another bridge's KEK
    assert other._unseal(moved) is None and moved.with_suffix(".damaged").exists()


def test_a_plaintext_spool_file_of_an_older_bridge_is_still_sent(tmp_path: Path) -> None:
    old = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool")
    path = old.enqueue(sample_event(2), seq=1)
    new = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool", keys=audit_file_keys(_settings(tmp_path)))
    assert b"PAT2" in split_frames(new._unseal(path))[0]


def _archived(tmp_path: Path, settings: Any) -> Path:
    db.migrate(settings.store.url)
    store = open_store(settings)
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for i in range(5):
        store.append(ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor(username="rad.alice"),
                                   objects=(ev.patient("PAT1", "Doe^Jane"),), time=old + dt.timedelta(minutes=i)))
    path = tmp_path / "archive" / "audit-2021.jsonl"
    assert store.archive(dt.datetime(2021, 1, 1, tzinfo=dt.UTC), path) == 5
    return path


def test_an_archive_is_sealed_and_verifies_with_the_kek_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = _archived(tmp_path, settings)
    raw = path.read_bytes()
    assert sealed.is_sealed(raw) and _clear(raw) == []
    store = open_store(settings, signing=False)
    assert verify_archive(path, store.key, store.file_keys).ok
    no_key = verify_archive(path, store.key)
    assert not no_key.ok and "encrypted" in no_key.message
    renamed = path.with_name("audit-2099.jsonl")
    path.rename(renamed)  # the name is bound in: a file moved onto another archive's name
    assert not verify_archive(renamed, store.key, store.file_keys).ok


def test_a_plaintext_archive_of_an_older_bridge_still_verifies(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    db.migrate(settings.store.url)
    store = open_store(settings)
    store.file_keys = None  # as an older bridge wrote them
    store.append(sample_event(3))
    path = tmp_path / "plain.jsonl"
    store.archive(dt.datetime(2999, 1, 1, tzinfo=dt.UTC), path)
    assert b"PAT3" in path.read_bytes()
    assert verify_archive(path, store.key, audit_file_keys(settings)).ok


def test_the_crash_journal_is_sealed_and_replays(tmp_path: Path) -> None:
    keys = audit_file_keys(_settings(tmp_path))
    journal = Journal(tmp_path / "journal", keys)
    journal.write(sample_event(4))
    journal.write(sample_event(5))
    raw = journal._path.read_bytes()
    assert _clear(raw) == [] and raw.count(b"E1:") == 2
    journal._file.close()  # the process died: its lock is gone
    reader = Journal(tmp_path / "journal", keys)
    (_, events), = reader.orphans()
    assert [e.objects[0].id for e in events] == ["PAT4", "PAT5"]
    reader.forget()


def test_the_plugins_audit_spool_is_sealed_under_the_storage_kek(tmp_path: Path) -> None:
    ring = envelope.LocalKeyRing({"s1": b"\x01" * 32}, "s1")
    posted: list[list[dict[str, Any]]] = []
    shipper = AuditShipper(source="orthanc", issuer="https://bridge", spool_dir=str(tmp_path / "ps"),
                           audit_url=None)
    shipper.spool_keys = ring
    payload = [sample_event(6).to_dict()]
    shipper._ship(payload)
    (spool,) = (tmp_path / "ps").glob("spool-*.jsonl")
    raw = spool.read_bytes()
    assert _clear(raw) == [] and raw.startswith(b"E1:")
    shipper.audit_url = "https://bridge/audit"
    shipper._post = lambda url, body, headers: posted.append(json.loads(body)["events"]) or 200  # type: ignore[method-assign]
    shipper._replay_file(spool)
    assert posted == [payload] and not spool.exists()
    # a line sealed under another KEK is kept aside for a human, never sent
    stranger = AuditShipper(source="orthanc", issuer="https://bridge", spool_dir=str(tmp_path / "ps"))
    stranger.spool_keys = envelope.LocalKeyRing({"s9": b"\x09" * 32}, "s9")
    stranger._ship(payload)
    (spool,) = (tmp_path / "ps").glob("spool-*.jsonl")
    shipper._replay_file(spool)
    assert shipper.stats["corrupt_lines"] == 1 and list((tmp_path / "ps").glob("corrupt-*.jsonl"))


def test_a_kek_rotation_rewraps_archives_and_spool_files(tmp_path: Path) -> None:
    old_settings = _settings(tmp_path)
    path = _archived(tmp_path, old_settings)
    sender = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool", keys=audit_file_keys(old_settings))
    spooled = sender.enqueue(sample_event(7), seq=1)
    body_before = path.read_bytes()[envelope.parse_header(path.read_bytes()).length:]
    new_kek = KeyEncryptor.generate_secret()
    report = rewrap(_settings(tmp_path, new_kek, previous=KEK))
    assert report.audit_files == 2 and report.audit_files_unopenable == []
    assert path.read_bytes().endswith(body_before)  # the body is untouched
    after = _settings(tmp_path, new_kek)
    store = open_store(after, signing=False)
    assert verify_archive(path, store.key, store.file_keys).ok
    new_sender = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool", keys=audit_file_keys(after))
    assert b"PAT7" in split_frames(new_sender._unseal(spooled))[0]
    with pytest.raises(envelope.EnvelopeError):
        sealed.open_blob(audit_file_keys(old_settings), path.name, sealed.AUDIT_ARCHIVE, path.read_bytes())
