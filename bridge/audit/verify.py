"""Verify the audit chain in the database: walk it, stop at the first problem and name it.

The walk checks each record's own hash (:func:`bridge.audit.chain.record_hash`), its link to the
previous record, its position, and every signed checkpoint it passes.  A database administrator
who rewrites the chain and recomputes every hash is caught by the first checkpoint after the
rewritten record; records after the newest checkpoint are protected by the chain links and by the
copy shipped to the syslog collector (bridge/audit/syslog.py).  Long chains are checked by worker
processes over contiguous ranges (hashing is CPU-bound; the GIL would cap it at one core).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from bridge.audit.chain import HASHED, checkpoint_payload, record_hash
from bridge.audit.keys import CheckpointKey
from bridge.errors import BridgeError
from bridge.store.models import AuditCheckpoint, AuditEventRow, AuditHead

if TYPE_CHECKING:
    from bridge.audit.store import AuditStore

HEAD_ID = 1


class AuditChainBroken(BridgeError, RuntimeError):
    """The chain does not verify: the trail must be investigated (exit 1), not an input fixed.
    Also a RuntimeError, which is what archiving raised before the error tree."""

    exit_code = 1
#: below this many records a parallel verify costs more (process start-up) than it saves
PARALLEL_MIN = 200_000


@dataclass
class VerifyReport:
    """Result of :meth:`AuditStore.verify`.  ``kind`` of the first problem: edited | deleted |
    inserted | reordered | checkpoint; ``seq`` / ``event_id`` name the first bad record."""

    ok: bool
    records: int = 0
    checkpoints: int = 0
    signatures_checked: bool = False
    base_seq: int = 0
    last_seq: int = 0
    kind: str | None = None
    seq: int | None = None
    event_id: str | None = None
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Walk:
    """State of the verification walk (kept small: the fast path touches only these)."""

    prev: str | None
    prev_prev: str | None
    prev_seq: int
    count: int = 0
    seen_cp: dict[int, str] = field(default_factory=dict)
    start_prev: str | None = None
    start_seq: int | None = None


SCAN_SQL = f"SELECT seq, prev_hash, hash, {', '.join(HASHED)} FROM audit_events"  # noqa: S608 (constant)


def _scan(cur: Any, w: _Walk, cp_hash: dict[int, str], batch: int) -> tuple[Any, bool, int | None]:
    """The verify inner loop over an ordered cursor.  Advances ``w`` over every good record and
    returns (first bad row or None, whether that row's own hash was right, checkpoint mismatch seq).
    ``w.prev is None`` means "start wherever the cursor starts" (a parallel worker's range)."""
    prev, prev_prev, prev_seq, count, seen = w.prev, w.prev_prev, w.prev_seq, 0, w.seen_cp
    result: tuple[Any, bool, int | None] = (None, True, None)
    while True:
        rows = cur.fetchmany(batch)
        if not rows:
            break
        if prev is None:
            prev, prev_seq = rows[0][1], rows[0][0] - 1
            w.start_prev, w.start_seq = prev, rows[0][0]
        for row in rows:
            seq, prev_hash, h = row[0], row[1], row[2]
            ok_self = record_hash(prev_hash, row[3:]) == h
            if not ok_self or prev_hash != prev or seq != prev_seq + 1:
                result = (row, ok_self, None)
                break
            if seq in cp_hash:
                seen[seq] = h
                if cp_hash[seq] != h:
                    result = (None, True, seq)
                    break
            prev_prev, prev, prev_seq = prev, h, seq
            count += 1
        else:
            continue
        break
    w.prev, w.prev_prev, w.prev_seq, w.count = prev, prev_prev, prev_seq, w.count + count
    return result


def _scan_range(url: str, lo: int, hi: int, cp_hash: dict[int, str], batch: int,
                cipher_key: bytes | None = None) -> dict[str, Any]:
    """One parallel verify worker: check records ``lo..hi`` on its own connection (an encrypted
    SQLite store: with the store's key, handed over the worker's pipe, never its command line)."""
    from bridge.store.db import engine as make_engine

    eng = make_engine(url, cipher_key=cipher_key)
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # open the (snapshot) transaction first
            cur = _cursor(conn, f"{SCAN_SQL} WHERE seq BETWEEN {int(lo)} AND {int(hi)} ORDER BY seq", batch)
            w = _Walk(prev=None, prev_prev=None, prev_seq=lo - 1)
            bad, _, cp_bad = _scan(cur, w, cp_hash, batch)
            cur.close()
        return {
            "bad": bad is not None or cp_bad is not None,
            "start_prev": w.start_prev,
            "start_seq": w.start_seq,
            "prev": w.prev,
            "prev_seq": w.prev_seq,
            "count": w.count,
            "seen": w.seen_cp,
        }
    finally:
        eng.dispose()


def verify_chain(
    store: AuditStore, key: CheckpointKey | None = None, *, batch: int = 20_000, workers: int | None = None
) -> VerifyReport:
    """Walk the whole chain; stop at the first problem and name it (see :class:`VerifyReport`).

    Long chains (>= PARALLEL_MIN records) are checked by ``workers`` processes (default: the
    CPU count, at most 4), each over a contiguous seq range, and stitched at the range edges;
    hashing is CPU-bound and the GIL would otherwise cap it at one core."""
    t0 = time.perf_counter()
    key = key or store.key
    with store.engine.connect() as conn:
        head = conn.execute(select(AuditHead).where(AuditHead.id == HEAD_ID)).mappings().first()
        if head is None:
            return VerifyReport(False, kind="deleted", message="audit_head row is missing")
        cps = [dict(r) for r in conn.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).mappings()]
        rep = VerifyReport(
            True,
            checkpoints=len(cps),
            signatures_checked=key is not None,
            base_seq=head["base_seq"],
            last_seq=head["last_seq"],
        )
        bad = _check_checkpoint_signatures(cps, key)
        if bad:
            return _finish(
                rep,
                t0,
                "checkpoint",
                bad["seq"],
                None,
                f"checkpoint #{bad['id']} (seq {bad['seq']}) has an invalid signature or unknown key {bad['kid']}",
            )
        cp_hash = {c["seq"]: c["hash"] for c in cps if c["seq"] > head["base_seq"]}
        walk = _Walk(prev=head["base_hash"], prev_prev=None, prev_seq=head["base_seq"])
        problem = None
        if not _parallel_walk(store, conn, walk, cp_hash, workers, batch):
            # sequential: also the exact diagnosis whenever a parallel range found a problem
            walk = _Walk(prev=head["base_hash"], prev_prev=None, prev_seq=head["base_seq"])
            problem = _walk(conn, walk, cp_hash, batch)
        rep.records = walk.count
        if problem:
            return _finish(rep, t0, *problem)
        # the archive boundary must itself be covered by a signed archive checkpoint
        if head["base_seq"] > 0 and not any(
            c["kind"] == "archive" and c["seq"] == head["base_seq"] and c["hash"] == head["base_hash"] for c in cps
        ):
            return _finish(
                rep,
                t0,
                "edited",
                head["base_seq"] + 1,
                None,
                "chain base (archive boundary) is not covered by a signed archive checkpoint",
            )
        for c in cps:
            if c["seq"] > head["base_seq"] and c["seq"] not in walk.seen_cp:
                return _finish(
                    rep,
                    t0,
                    "deleted",
                    c["seq"],
                    None,
                    f"record {c['seq']} named by signed checkpoint #{c['id']} is missing "
                    f"(chain ends at {walk.prev_seq})",
                )
        if walk.prev_seq != head["last_seq"] or walk.prev != head["last_hash"]:
            if walk.prev_seq < head["last_seq"]:
                return _finish(
                    rep,
                    t0,
                    "deleted",
                    walk.prev_seq + 1,
                    None,
                    f"records {walk.prev_seq + 1}..{head['last_seq']} are missing "
                    f"(chain head says {head['last_seq']})",
                )
            return _finish(
                rep,
                t0,
                "inserted",
                head["last_seq"] + 1,
                None,
                f"records after the chain head ({head['last_seq']}) up to "
                f"{walk.prev_seq} were added outside the audit writer",
            )
    return _finish(rep, t0, None, None, None, f"{rep.records} records, {rep.checkpoints} checkpoints OK")


def _finish(
    rep: VerifyReport, t0: float, kind: str | None, seq: int | None, event_id: str | None, message: str
) -> VerifyReport:
    rep.ok = kind is None
    rep.kind, rep.seq, rep.event_id, rep.message = kind, seq, event_id, message
    rep.seconds = time.perf_counter() - t0
    return rep


def _check_checkpoint_signatures(cps: list[dict[str, Any]], key: CheckpointKey | None) -> dict[str, Any] | None:
    if key is None:
        return None
    for c in cps:
        payload = checkpoint_payload(c["seq"], c["hash"], c["created_at"], c["kind"], c["kid"])
        signer = key.for_kid(c["kid"])  # the current key, or a retired one (a rotation)
        if signer is None or not signer.verify(payload, c["signature"]):
            return c
    return None


def _parallel_walk(
    store: AuditStore, conn: Connection, w: _Walk, cp_hash: dict[int, str], workers: int | None, batch: int
) -> bool:
    """Verify in worker processes; True if every range is clean and the ranges link up
    (``w`` then describes the whole chain), False to fall back to the sequential walk."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bridge.store.db import cipher_key_of

    workers = workers or min(os.cpu_count() or 1, 4)
    url = store.engine.url
    if workers < 2 or (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")):
        return False
    lo, hi = conn.execute(select(func.min(AuditEventRow.seq), func.max(AuditEventRow.seq))).one()
    if lo is None or hi - lo + 1 < PARALLEL_MIN:
        return False
    step = (hi - lo + 1 + workers - 1) // workers
    ranges = [(a, min(hi, a + step - 1)) for a in range(lo, hi + 1, step)]
    url_text = url.render_as_string(hide_password=False)
    # spawn, not fork: the caller may be a threaded server (fork would copy held locks).
    # Any failure to run workers (e.g. a script without a __main__ guard) only costs speed.
    try:
        with ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("spawn")) as pool:
            n = len(ranges)
            key = cipher_key_of(store.engine)
            parts = list(pool.map(_scan_range, [url_text] * n, [a for a, _ in ranges], [b for _, b in ranges],
                                  [cp_hash] * n, [batch] * n, [key] * n))
    except Exception:
        return False
    prev, prev_seq = w.prev, w.prev_seq
    for part in parts:
        if part["bad"] or part["count"] == 0 or part["start_prev"] != prev or part["start_seq"] != prev_seq + 1:
            return False
        prev, prev_seq = part["prev"], part["prev_seq"]
        w.count += part["count"]
        w.seen_cp.update(part["seen"])
    w.prev, w.prev_seq = prev, prev_seq
    return True


def _cursor(conn: Connection, sql: str, batch: int) -> Any:
    # DB-API cursor, plain tuples: SQLAlchemy Row objects would halve the verify rate.  On
    # PostgreSQL a named (server-side) cursor streams instead of loading the table into memory.
    dbapi = conn.connection.dbapi_connection
    pg = conn.dialect.name == "postgresql"
    cur = dbapi.cursor(name="pacs_bridge_audit_verify") if pg else dbapi.cursor()  # type: ignore[union-attr]
    if pg:
        cur.itersize = batch
    cur.execute(sql)
    return cur


def _walk(
    conn: Connection, w: _Walk, cp_hash: dict[int, str], batch: int
) -> tuple[str, int, str | None, str] | None:
    cur = _cursor(conn, SCAN_SQL + " ORDER BY seq", batch)
    try:
        bad, ok_self, cp_bad = _scan(cur, w, cp_hash, batch)
        if cp_bad is not None:
            return (
                "edited",
                cp_bad,
                None,
                f"record {cp_bad} differs from its signed checkpoint: the chain "
                f"was rewritten at or before record {cp_bad}",
            )
        if bad is not None:
            return _diagnose(conn, w, bad, ok_self)
        return None
    finally:
        cur.close()


def _diagnose(conn: Connection, w: _Walk, row: Any, ok_self: bool) -> tuple[str, int, str | None, str]:
    """Name the first problem at ``row`` (see docs/audit.md, "What verify reports")."""
    seq, prev_hash, event_id = row[0], row[1], row[3]
    nxt = conn.execute(
        select(AuditEventRow.prev_hash).where(AuditEventRow.seq > seq).order_by(AuditEventRow.seq).limit(1)
    ).scalar()
    if not ok_self:
        if nxt is not None and nxt == w.prev:
            return ("inserted", seq, event_id, f"record {seq} was inserted: the chain skips it")
        return ("edited", seq, event_id, f"record {seq} was edited: its hash does not match its content")
    if prev_hash == w.prev:  # linked and self-consistent, only the position number is off
        return ("edited", seq, event_id, f"record {seq} has a changed seq (expected {w.prev_seq + 1})")
    if w.prev_prev is not None and prev_hash == w.prev_prev:
        return (
            "inserted",
            w.prev_seq,
            None,
            f"record {w.prev_seq} was inserted between records {w.prev_seq - 1} and {seq}",
        )
    owner = conn.execute(select(AuditEventRow.seq).where(AuditEventRow.hash == prev_hash)).scalar()
    if owner is not None:
        return ("reordered", seq, event_id, f"record {seq} is out of order: it belongs right after record {owner}")
    if seq > w.prev_seq + 1:
        gap = f"{w.prev_seq + 1}" if seq == w.prev_seq + 2 else f"{w.prev_seq + 1}..{seq - 1}"
        return ("deleted", w.prev_seq + 1, None, f"record(s) {gap} deleted (record {seq} links to a missing one)")
    return (
        "edited",
        w.prev_seq,
        None,
        f"record {w.prev_seq} was rewritten (hash recomputed): record {seq} no longer links to it",
    )
