"""The store and the audit chain on the dev stack's real PostgreSQL (TLS, verify-full)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_url(stack):
    if "postgres" not in stack:
        pytest.skip("postgres is not part of this dev stack run (PACS_BRIDGE_DEVSTACK_ONLY)")
    from pacs_devstack.postgres import private_schema

    with private_schema(stack) as scoped:  # a private schema: other tests share this database
        yield scoped


def test_migration_and_lease(pg_url):
    from sqlalchemy import inspect

    from bridge.store import db, lease

    eng = db.engine(pg_url)
    assert "audit_events" in inspect(eng).get_table_names()
    assert db.migrate(pg_url) == "0007"
    assert lease.acquire(eng, "sync", "replica-a", 60)
    assert not lease.acquire(eng, "sync", "replica-b", 60)
    assert lease.release(eng, "sync", "replica-a")


def test_audit_append_verify_and_tamper_detection(pg_url):
    import threading

    from bridge.audit.keys import CheckpointKey
    from bridge.audit.store import AuditStore
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType
    from bridge.store import db

    store = AuditStore(db.engine(pg_url), CheckpointKey.generate(), checkpoint_every=10)

    def write(k: int) -> None:
        for i in range(15):
            store.append(
                ev.AuditEvent(
                    AuditEventType.STUDY_ACCESSED,
                    actor=ev.Actor("s@i", f"user{k}"),
                    objects=(ev.patient(f"P{k}"), ev.study(f"1.2.3.{k}.{i}")),
                )
            )

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.append_many([ev.AuditEvent(AuditEventType.LOGIN_SUCCESS, actor=ev.Actor("s@i", "bob")) for _ in range(5)])
    rep = store.verify()
    assert rep.ok and rep.records == 50 and rep.checkpoints == 5, rep.message
    assert len(store.query(user="user1")) == 15
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 17"))
    rep = store.verify()
    assert (rep.kind, rep.seq) == ("deleted", 17), rep.message
