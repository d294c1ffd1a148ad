"""The store on SQLite: migrations match the models, pragmas are set, the lease is exclusive."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from bridge.store import db, lease
from bridge.store.models import Base, RevokedToken, RoleAssignment, utcnow


@pytest.fixture
def url(tmp_path):
    u = f"sqlite:///{tmp_path}/sub/bridge.db"
    assert db.migrate(u) == "0007"
    return u


def test_migration_creates_every_table_and_matches_models(url):
    eng = db.engine(url)
    names = set(inspect(eng).get_table_names())
    assert {
        "audit_events",
        "audit_head",
        "audit_checkpoints",
        "sync_runs",
        "sync_lock",
        "role_assignments",
        "signing_keys",
        "revoked_tokens",
        "shares",
        "ended_sessions",
        "logout_token_jtis",
    } <= names
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_is_idempotent(url):
    assert db.migrate(url) == "0007"


def test_sqlite_pragmas(url):
    eng = db.engine(url)
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS


def test_session_roundtrip_keeps_utc_and_json(url):
    eng = db.engine(url)
    exp = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    with db.session(eng) as s:
        s.add(RevokedToken(jti="j1", exp=exp))
        s.add(
            RoleAssignment(
                subject_id="guid-1",
                username="rad.alice",
                role="radiologist",
                source_group_dn="CN=Radiology,OU=Groups,DC=hospital,DC=test",
                rule_id="r1",
                scopes={"modalities": ["CT"]},
            )
        )
    with db.session(eng) as s:
        tok = s.get(RevokedToken, "j1")
        assert tok.exp == exp and tok.exp.tzinfo is not None
        ra = s.query(RoleAssignment).one()
        assert ra.scopes == {"modalities": ["CT"]} and ra.managed is True


def test_naive_datetime_refused(url):
    eng = db.engine(url)
    with pytest.raises(Exception, match="naive"), db.session(eng) as s:
        s.add(RevokedToken(jti="j2", exp=dt.datetime(2030, 1, 1)))


def test_lease_is_exclusive_and_expires(url):
    eng = db.engine(url)
    assert lease.acquire(eng, "sync", "a", 60)
    assert not lease.acquire(eng, "sync", "b", 60)
    assert lease.acquire(eng, "sync", "a", 60)  # renewal
    assert lease.holder(eng, "sync")[0] == "a"
    assert lease.release(eng, "sync", "a")
    assert lease.acquire(eng, "sync", "b", -1)  # already expired lease
    assert lease.holder(eng, "sync") is None
    assert lease.acquire(eng, "sync", "a", 60)
    assert lease.holder(eng, "sync")[1] > utcnow()


def test_unsupported_url():
    with pytest.raises(db.StoreError, match="unsupported"):
        db.engine("mysql://x/y")


def test_cli_db_upgrade(tmp_path):
    from click.testing import CliRunner

    from bridge.cli import main

    res = CliRunner().invoke(main, ["db", "upgrade", "--url", f"sqlite:///{tmp_path}/c.db"])
    assert res.exit_code == 0, res.output
    assert "0007" in res.output
