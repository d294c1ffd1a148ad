"""Audit store benchmark: append rate (single and batched) and verify rate over 1,000,000 records.

    .venv/bin/python bench/audit.py [--records 1000000] [--postgres URL] [--dir DIR]

Prints one JSON object.  PostgreSQL is measured when ``--postgres`` is given or when the dev
stack's postgres (``$PACS_BRIDGE_DEVSTACK_DIR/stack.json``) is running.  The verify corpus is
generated in bulk (hashes computed here, rows written with one executemany per chunk): going
through the public append path would measure appends again, a million times over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.audit.chain import HASHED, event_columns, record_hash
from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore
from bridge.core.audit_codes import AuditEventType
from bridge.core.audit_events import Actor, AuditEvent, format_time, patient, study, utcnow
from bridge.store import db


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        AuditEventType.STUDY_ACCESSED,
        actor=Actor("f3a9@https://kc/realms/hospital", "rad.alice", "viewer", "10.1.2.3"),
        objects=(patient(f"PAT{i % 5000}"), study(f"1.2.826.0.1.3680043.2.1125.{i}")),
        correlation_id=f"req-{i}",
    )


def bench_appends(store: AuditStore, single: int, batched: int, batch: int = 500) -> dict[str, float]:
    events = [_event(i) for i in range(single + batched)]
    t = time.perf_counter()
    for ev in events[:single]:
        store.append(ev)
    single_rate = single / (time.perf_counter() - t)
    t = time.perf_counter()
    rest = events[single:]
    for k in range(0, len(rest), batch):
        store.append_many(rest[k : k + batch])
    return {
        "single_append_per_s": round(single_rate),
        f"batched_append_per_s_batch{batch}": round(batched / (time.perf_counter() - t)),
    }


def bulk_fill(store: AuditStore, n: int, chunk: int = 50_000) -> float:
    """Write ``n`` chained records quickly (same chain format as AuditStore; checkpoints every
    ``store.checkpoint_every``); return records/s."""
    template = event_columns(_event(0))
    base_time = utcnow()
    t0 = time.perf_counter()
    with db.write_transaction(store.engine) as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cur.execute(store._sql_head)
        seq, prev = cur.fetchone()
        cps = []
        for start in range(0, n, chunk):
            rows: list[tuple[Any, ...]] = []
            for i in range(start, min(n, start + chunk)):
                cols = dict(
                    template,
                    event_id=str(uuid.uuid4()),
                    patient_id=f"PAT{i % 5000}",
                    study_uid=f"1.2.826.0.1.3680043.2.1125.{i}",
                    time=format_time(base_time),
                    correlation_id=f"req-{i}",
                )
                values = [cols[k] for k in HASHED]
                seq += 1
                h = record_hash(prev, values)
                rows.append((seq, prev, h, *values))
                prev = h
                if seq % store.checkpoint_every == 0:
                    cps.append((seq, h))
            cur.executemany(store._sql_insert, rows)
        cur.execute(store._sql_update_head, (seq, prev, 1))
        cur.close()
        for s, h in cps:
            store._insert_checkpoint(conn, s, h, "periodic")
    return n / (time.perf_counter() - t0)


def run(url: str, records: int, single: int, batched: int, cipher_key: bytes | None = None) -> dict[str, Any]:
    db.migrate(url, cipher_key=cipher_key)
    eng = db.engine(url, cipher_key=cipher_key)
    store = AuditStore(eng, CheckpointKey.generate(), checkpoint_every=1000)
    out: dict[str, Any] = {"backend": eng.dialect.name}
    out.update(bench_appends(store, single, batched))
    if records:
        out["bulk_fill_per_s"] = round(bulk_fill(store, records))
        rep = store.verify()
        out.update(
            {
                "verify_records": rep.records,
                "verify_ok": rep.ok,
                "verify_seconds": round(rep.seconds, 2),
                "verify_per_s": round(rep.records / rep.seconds),
            }
        )
    eng.dispose()
    return out


def _devstack_postgres() -> str | None:
    try:
        from pacs_devstack import state

        info = state.read_stack().get("postgres") or {}
        if info:
            from pacs_devstack import postgres  # type: ignore[attr-defined]

            return str(postgres.database_url(info))
    except Exception:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--pg-records", type=int, default=200_000, help="verify corpus size on PostgreSQL")
    ap.add_argument("--single", type=int, default=3000)
    ap.add_argument("--batched", type=int, default=20000)
    ap.add_argument("--postgres", default=os.environ.get("PACS_BRIDGE_BENCH_PG_URL"))
    ap.add_argument("--dir", default=None, help="where the SQLite file goes (default: a temp dir)")
    ap.add_argument("--no-sqlcipher", action="store_true", help="skip the SQLCipher-encrypted SQLite run")
    args = ap.parse_args()
    result: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        result["sqlite"] = run(f"sqlite:///{d}/bench.db", args.records, args.single, args.batched)
    if not args.no_sqlcipher:  # store.sqlcipher: the same work on the encrypted file
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            result["sqlite_sqlcipher"] = run(f"sqlite:///{d}/bench.db", args.records, args.single, args.batched,
                                             cipher_key=os.urandom(32))
        plain, enc = result["sqlite"], result["sqlite_sqlcipher"]
        result["sqlcipher_ratio"] = {k: round(enc[k] / plain[k], 2) for k in plain
                                     if k.endswith("_per_s") and plain.get(k) and k in enc}
    pg = args.postgres or _devstack_postgres()
    if pg:
        eng = db.engine(pg)
        with eng.begin() as conn:  # a clean slate: the bench owns this database
            conn.exec_driver_sql(
                "DROP TABLE IF EXISTS audit_events, audit_head, audit_checkpoints, sync_runs, "
                "sync_lock, role_assignments, signing_keys, revoked_tokens, shares, "
                "alembic_version CASCADE"
            )
        eng.dispose()
        result["postgresql"] = run(pg, args.pg_records, args.single, args.batched)
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
