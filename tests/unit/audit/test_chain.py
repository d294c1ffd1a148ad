"""Hash chain: every kind of tampering is found and named (edit, delete, insert, reorder, checkpoint)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from bridge.audit.archive import verify_archive
from bridge.audit.chain import HASHED, record_hash
from bridge.audit.export import export_csv, export_json
from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore


@pytest.fixture
def chain(store: AuditStore, make_event) -> AuditStore:
    store.append_many([make_event(i) for i in range(1, 6)])
    for i in range(6, 11):
        store.append(make_event(i))
    return store


def sql(store: AuditStore, statement: str, **params) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def row(store: AuditStore, seq: int) -> dict:
    with store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM audit_events WHERE seq = :s"), {"s": seq}).mappings().one())


def rehash(store: AuditStore, seq: int, prev: str) -> str:
    r = row(store, seq)
    h = record_hash(prev, [r[k] for k in HASHED])
    sql(store, "UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s", p=prev, h=h, s=seq)
    return h


def test_intact_chain_verifies(chain):
    rep = chain.verify()
    assert rep.ok, rep.message
    assert rep.records == 10 and rep.checkpoints == 2 and rep.signatures_checked


def test_edit_is_found(chain):
    sql(chain, "UPDATE audit_events SET actor_username = 'someone.else' WHERE seq = 5")
    rep = chain.verify()
    assert (rep.ok, rep.kind, rep.seq) == (False, "edited", 5)
    assert rep.event_id == row(chain, 5)["event_id"]


def test_edit_with_recomputed_hash_is_found(chain):
    sql(chain, "UPDATE audit_events SET patient_id = 'OTHER' WHERE seq = 6")
    rehash(chain, 6, row(chain, 5)["hash"])
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("edited", 6), rep.message


def test_delete_is_found(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq = 6")
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("deleted", 6), rep.message


def test_delete_of_the_newest_records_is_found(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq >= 9")
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("deleted", 9), rep.message


def test_delete_hidden_by_rewinding_the_head_is_caught_by_a_checkpoint(chain):
    sql(chain, "DELETE FROM audit_events WHERE seq >= 7")
    sql(chain, "UPDATE audit_head SET last_seq = 6, last_hash = :h", h=row(chain, 6)["hash"])
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("deleted", 8), rep.message  # checkpoint at 8 names the missing record


def test_insert_in_the_middle_is_found(chain, make_event):
    sql(chain, "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 6")
    sql(chain, "UPDATE audit_events SET seq = seq - 99 WHERE seq >= 106")
    forged = make_event(99)
    from bridge.audit.chain import event_columns

    cols = event_columns(forged)
    prev = row(chain, 5)["hash"]
    h = record_hash(prev, [cols[k] for k in HASHED])
    names = ", ".join(("seq", "prev_hash", "hash", *HASHED))
    binds = ", ".join(f":{n}" for n in ("seq", "prev_hash", "hash", *HASHED))
    sql(chain, f"INSERT INTO audit_events ({names}) VALUES ({binds})", seq=6, prev_hash=prev, hash=h, **cols)
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("inserted", 6), rep.message


def test_insert_of_a_record_with_a_bad_hash_is_found(chain):
    r = row(chain, 10)
    sql(chain, "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 6")
    sql(chain, "UPDATE audit_events SET seq = seq - 99 WHERE seq >= 106")
    r.update(seq=6, event_id="11111111-2222-3333-4444-555555555555", hash="f" * 64, prev_hash="e" * 64)
    names = ", ".join(r)
    sql(chain, f"INSERT INTO audit_events ({names}) VALUES ({', '.join(':' + k for k in r)})", **r)
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("inserted", 6), rep.message


def test_append_outside_the_writer_is_found(chain, make_event):
    r = row(chain, 10)
    forged = make_event(42)
    from bridge.audit.chain import event_columns

    cols = event_columns(forged)
    h = record_hash(r["hash"], [cols[k] for k in HASHED])
    names = ", ".join(("seq", "prev_hash", "hash", *HASHED))
    binds = ", ".join(f":{n}" for n in ("seq", "prev_hash", "hash", *HASHED))
    sql(chain, f"INSERT INTO audit_events ({names}) VALUES ({binds})", seq=11, prev_hash=r["hash"], hash=h, **cols)
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("inserted", 11), rep.message


def test_reorder_is_found(chain):
    sql(chain, "UPDATE audit_events SET seq = 1000 WHERE seq = 4")
    sql(chain, "UPDATE audit_events SET seq = 4 WHERE seq = 5")
    sql(chain, "UPDATE audit_events SET seq = 5 WHERE seq = 1000")
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("reordered", 4), rep.message


def test_full_rewrite_is_caught_by_the_signed_checkpoint(chain):
    sql(chain, "UPDATE audit_events SET actor_username = 'x' WHERE seq = 2")
    prev = row(chain, 1)["hash"]
    for s in range(2, 11):
        prev = rehash(chain, s, prev)
    sql(chain, "UPDATE audit_head SET last_hash = :h", h=prev)
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("edited", 4), rep.message  # first checkpoint after the edit


def test_forged_checkpoint_signature_is_found(chain):
    sql(chain, "UPDATE audit_checkpoints SET hash = :h WHERE seq = 4", h="0" * 64)
    rep = chain.verify()
    assert (rep.kind, rep.seq) == ("checkpoint", 4), rep.message


def test_wrong_verification_key_is_reported(chain):
    rep = chain.verify(key=CheckpointKey.generate())
    assert rep.kind == "checkpoint"


def test_parallel_verify_agrees(chain, monkeypatch):
    import bridge.audit.verify as st

    monkeypatch.setattr(st, "PARALLEL_MIN", 1)
    assert chain.verify(workers=2).ok
    sql(chain, "DELETE FROM audit_events WHERE seq = 7")
    rep = chain.verify(workers=2)
    assert (rep.kind, rep.seq) == ("deleted", 7), rep.message


def test_archive_keeps_the_rest_verifiable(chain, tmp_path, make_event):
    cutoff = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    chain.append(make_event(11))  # stays (newer than the cutoff is not guaranteed: set its time)
    sql(chain, "UPDATE audit_events SET time = '2999-01-01T00:00:00.000000Z' WHERE seq = 11")
    # the edit above broke record 11's hash: restore it so the archive precondition holds
    rehash(chain, 11, row(chain, 10)["hash"])
    sql(chain, "UPDATE audit_head SET last_hash = :h", h=row(chain, 11)["hash"])
    archive = tmp_path / "archive" / "audit-1.jsonl"
    assert chain.archive(cutoff, archive) == 10
    assert chain.count() == 1
    rep = chain.verify()
    assert rep.ok and rep.base_seq == 10 and rep.records == 1, rep.message
    assert verify_archive(archive, chain.key).ok
    lines = archive.read_text().splitlines()
    lines[3] = lines[3].replace("rad.alice", "rad.mallory")
    archive.write_text("\n".join(lines) + "\n")
    assert verify_archive(archive, chain.key).kind == "edited"


def test_archive_refuses_a_broken_chain(chain, tmp_path):
    sql(chain, "DELETE FROM audit_events WHERE seq = 3")
    with pytest.raises(RuntimeError, match="does not verify"):
        chain.archive(dt.datetime.now(dt.UTC), tmp_path / "a.jsonl")


def test_concurrent_writers_never_fork_the_chain(store, make_event):

    import threading

    def write(k: int) -> None:
        for i in range(20):
            store.append(make_event(k * 100 + i))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rep = store.verify()
    assert rep.ok and rep.records == 80, rep.message


def test_query_filters_and_exports(chain, make_event):
    chain.append(make_event(3))
    assert [r["seq"] for r in chain.query(patient="PAT3")] == [3, 11]
    assert len(chain.query(study="1.2.826.0.1.3680043.2.1125.4")) == 1
    assert len(chain.query(user="rad.alice")) == 11
    assert chain.query(types=["login.failure"]) == []
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert chain.query(since=future) == [] and len(chain.query(until=future)) == 11
    import io

    buf = io.StringIO()
    assert export_json(chain.query(limit=2), buf) == 2
    data = json.loads(buf.getvalue())
    assert data[0]["objects"][0] == {"kind": "patient", "id": "PAT1", "name": "Doe^Jane"}
    buf = io.StringIO()
    export_csv(chain.query(limit=2), buf)
    assert buf.getvalue().splitlines()[0].startswith("seq,event_id,time,type,outcome")


def test_the_chain_hash_is_computed_in_one_function():
    """Appends, the database walk and archive files all hash through chain.record_hash: a second
    hand-inlined copy could drift from it and make verify disagree with the writer."""
    import inspect

    import bridge.audit.archive
    import bridge.audit.store
    import bridge.audit.verify

    for mod in (bridge.audit.store, bridge.audit.verify, bridge.audit.archive):
        src = inspect.getsource(mod)
        assert "sha256" not in src and "hashlib" not in src, mod.__name__
