"""Every kind of tampering is found and named on the dev stack's real PostgreSQL too (the unit tests
in tests/unit/audit/test_chain.py cover SQLite): PostgreSQL returns rows and types differently, and
its verify walks a server-side cursor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from bridge.audit.chain import HASHED, event_columns, record_hash
from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.store import db

pytestmark = pytest.mark.integration


@pytest.fixture
def chain(stack: dict[str, Any]) -> Iterator[AuditStore]:
    """Ten records (checkpoints at 4 and 8) in a private schema of the shared database."""
    if "postgres" not in stack:
        pytest.skip("postgres is not part of this dev stack run")
    from pacs_devstack.postgres import private_schema

    with private_schema(stack, "aud") as scoped:
        store = AuditStore(db.engine(scoped), CheckpointKey.generate(), checkpoint_every=4)
        for i in range(10):
            store.append(event(i))
        yield store
        store.engine.dispose()


def event(i: int) -> ev.AuditEvent:
    return ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor("s@i", "rad.alice", "viewer", "10.0.0.9"),
                         objects=(ev.patient(f"P{i}"), ev.study(f"1.2.3.{i}")), details={"i": i})


def sql(store: AuditStore, statement: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def row(store: AuditStore, seq: int) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM audit_events WHERE seq = :s"), {"s": seq}).mappings().one())


def insert(store: AuditStore, seq: int, prev: str, e: ev.AuditEvent) -> None:
    cols = event_columns(e)
    names = ("seq", "prev_hash", "hash", *HASHED)
    sql(store, f"INSERT INTO audit_events ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})",
        seq=seq, prev_hash=prev, hash=record_hash(prev, [cols[k] for k in HASHED]), **cols)


def edit(s: AuditStore) -> None:
    sql(s, "UPDATE audit_events SET patient_id = 'OTHER' WHERE seq = 5")


def delete(s: AuditStore) -> None:
    sql(s, "DELETE FROM audit_events WHERE seq = 6")


def insert_middle(s: AuditStore) -> None:
    sql(s, "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 6")
    sql(s, "UPDATE audit_events SET seq = seq - 99 WHERE seq >= 106")
    insert(s, 6, row(s, 5)["hash"], event(99))


def reorder(s: AuditStore) -> None:
    sql(s, "UPDATE audit_events SET seq = 1000 WHERE seq = 4")
    sql(s, "UPDATE audit_events SET seq = 4 WHERE seq = 5")
    sql(s, "UPDATE audit_events SET seq = 5 WHERE seq = 1000")


def rewrite(s: AuditStore) -> None:
    """Edit record 2 and recompute every later hash: only the signed checkpoint at 4 catches it."""
    sql(s, "UPDATE audit_events SET actor_username = 'x' WHERE seq = 2")
    prev = row(s, 1)["hash"]
    for seq in range(2, 11):
        r = row(s, seq)
        prev_new = record_hash(prev, [r[k] for k in HASHED])
        sql(s, "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s", p=prev, h=prev_new, s=seq)
        prev = prev_new
    sql(s, "UPDATE audit_head SET last_hash = :h", h=prev)


def forge_checkpoint(s: AuditStore) -> None:
    sql(s, "UPDATE audit_checkpoints SET signature = :g WHERE seq = 4", g="A" * 86)


@pytest.mark.parametrize("tamper, kind, seq", [
    (edit, "edited", 5),
    (delete, "deleted", 6),
    (insert_middle, "inserted", 6),
    (reorder, "reordered", 4),
    (rewrite, "edited", 4),
    (forge_checkpoint, "checkpoint", 4),
], ids=["edit", "delete", "insert", "reorder", "rewrite-with-hashes", "forged-checkpoint"])
def test_tampering_is_found_and_named_on_postgresql(chain: AuditStore, tamper: Callable[[AuditStore], None],
                                                   kind: str, seq: int) -> None:
    assert chain.verify().ok
    tamper(chain)
    rep = chain.verify()
    assert (rep.ok, rep.kind) == (False, kind), rep.message
    if kind != "checkpoint":
        assert rep.seq == seq, rep.message
