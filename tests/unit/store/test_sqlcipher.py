"""The SQLite store encrypted as a whole (store.sqlcipher): nothing identifying on disk, the
audit chain still verifies (sequential and parallel workers), a wrong KEK is an error naming
the file, and `db encrypt` converts a plaintext store without losing a row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from bridge.audit.store import open_store
from bridge.cli import main
from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.kek import KeyEncryptor
from bridge.store import db
from bridge.store.encrypt import is_encrypted

PATIENT = "PID-ZZ-4711"
NAME = "Doe^Jane"


def _settings(tmp_path: Path, *, sqlcipher: bool, kek: str | None = None):  # type: ignore[no-untyped-def]
    return load_config(
        store={"url": f"sqlite:///{tmp_path}/bridge.db", "sqlcipher": sqlcipher},
        tokens={"key_encryption_key": kek or KEK},
        audit={"checkpoint_key_file": str(tmp_path / "cp.key"), "checkpoint_every": 50},
    )


KEK = KeyEncryptor.generate_secret()


def _fill(settings, n: int = 30) -> None:  # type: ignore[no-untyped-def]
    db.migrate_store(settings)
    store = open_store(settings)
    for i in range(n):
        store.append(ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor(username="rad.alice"),
                                   objects=(ev.study(f"1.2.3.{i}"), ev.patient(PATIENT)),
                                   time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
                                   details={"patient_name": NAME}))
    store.engine.dispose()


def _on_disk(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("bridge.db*"))


def test_plaintext_store_shows_the_patient_and_the_encrypted_one_does_not(tmp_path: Path) -> None:
    plain_dir, enc_dir = tmp_path / "plain", tmp_path / "enc"
    plain_dir.mkdir()
    enc_dir.mkdir()
    _fill(_settings(plain_dir, sqlcipher=False))
    assert PATIENT.encode() in _on_disk(plain_dir)  # the test can see what it looks for
    settings = _settings(enc_dir, sqlcipher=True)
    _fill(settings)
    data = _on_disk(enc_dir)
    assert PATIENT.encode() not in data and b"rad.alice" not in data and b"SQLite format 3" not in data
    store = open_store(settings, signing=False)
    assert store.verify().ok
    assert store.verify(workers=2).ok  # parallel workers reopen the file with the key
    assert any(PATIENT in str(r) for r in store.query(patient=PATIENT))


def test_parallel_verify_workers_open_the_encrypted_file(tmp_path: Path) -> None:
    """A worker gets the store's key from the engine it was built from (over its pipe)."""
    from bridge.audit import verify

    settings = _settings(tmp_path, sqlcipher=True)
    _fill(settings, 40)
    real = verify._scan_range
    eng = db.engine_for(settings)
    assert db.cipher_key_of(eng) == db.cipher_key(settings)
    key = db.cipher_key_of(eng)
    assert key is not None
    out = real(eng.url.render_as_string(hide_password=False), 1, 40, {}, 100, key)
    assert out["count"] == 40 and not out["bad"]
    with pytest.raises(DatabaseError):  # without the key a worker cannot read it
        real(eng.url.render_as_string(hide_password=False), 1, 40, {}, 100, None)


def test_a_wrong_kek_is_an_error_naming_the_file(tmp_path: Path) -> None:
    _fill(_settings(tmp_path, sqlcipher=True))
    other = _settings(tmp_path, sqlcipher=True, kek=KeyEncryptor.generate_secret())
    with (pytest.raises(db.StoreError, match=r"bridge\.db: the key derived from tokens\.key_encryption_key"),
          db.engine_for(other).connect() as conn):
        conn.execute(text("SELECT 1"))


def test_sqlcipher_is_for_sqlite_only(tmp_path: Path) -> None:
    from bridge.config import ConfigError

    with pytest.raises(ConfigError, match="sqlcipher"):
        load_config(store={"url": "postgresql://bridge@db.example/bridge?sslmode=verify-full", "sqlcipher": True})


def test_db_encrypt_converts_a_plaintext_store_without_losing_a_row(tmp_path: Path) -> None:
    plain = _settings(tmp_path, sqlcipher=False)
    _fill(plain, 25)
    before = open_store(plain, signing=False).verify()
    config = tmp_path / "bridge.yaml"
    config.write_text(f"store: {{url: 'sqlite:///{tmp_path}/bridge.db'}}\n"
                      f"tokens: {{key_encryption_key: '{KEK}'}}\n"
                      f"audit: {{checkpoint_key_file: '{tmp_path}/cp.key'}}\n")
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["db", "encrypt", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert is_encrypted(tmp_path / "bridge.db") and PATIENT.encode() not in _on_disk(tmp_path)
    after = open_store(_settings(tmp_path, sqlcipher=True), signing=False).verify()
    assert after.ok and after.records == before.records == 25
    again = CliRunner().invoke(main, ["db", "encrypt", "--config", str(config)])
    assert again.exit_code == 2 and "already encrypted" in again.output
