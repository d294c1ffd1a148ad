"""The tamper-evident audit store: an append-only hash chain with signed checkpoints.

Chain: record *n* stores ``prev_hash`` (the hash of record *n-1*; :data:`GENESIS_HASH` for the
first) and ``hash = SHA-256(canonical JSON [version, prev_hash, event_id, time, type, outcome,
actor_user, actor_username, client_id, network_address, patient_id, study_uid, correlation_id,
body])`` (a JSON array in this fixed order, compact separators, non-ASCII escaped as \\uXXXX; ``body`` is itself the
canonical JSON, sorted keys, of the objects/details/description).  ``seq`` is the position and
is deliberately *not* hashed: the order lives in the ``prev_hash`` links, which lets
:meth:`AuditStore.verify` tell a reordering from an edit.

Checkpoints: every ``checkpoint_every`` records (and at each retention archive) the writer signs
``{seq, hash, created_at, kind, kid}`` with Ed25519 (bridge/audit/keys.py).  A database
administrator who rewrites the chain and recomputes every hash is caught by the first checkpoint
after the rewritten record; records after the newest checkpoint are protected by the chain links
and by the copy shipped to the syslog collector (bridge/audit/syslog.py).

Concurrency: appends lock the one ``audit_head`` row (``SELECT ... FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so seq numbers are gap-free and the chain never forks across
processes or replicas.  A single append is one short transaction; :meth:`AuditStore.append_many`
writes a batch in one.

Retention: :meth:`AuditStore.archive` verifies the chain, writes the expiring records with a
signed archive checkpoint to a JSONL file, then deletes them and moves the chain's base to the
last archived record, so the remaining chain still verifies from that boundary (and the archive
file verifies on its own with :func:`verify_archive`).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from bridge.audit.keys import ALG, CheckpointKey
from bridge.core.audit_codes import AuditEventType, ObjectKind
from bridge.core.audit_events import Actor, AuditEvent, ParticipantObject, format_time, parse_time
from bridge.store.db import write_transaction
from bridge.store.models import AuditCheckpoint, AuditEventRow, AuditHead

GENESIS_HASH = "0" * 64
HASH_VERSION = 1
HEAD_ID = 1
#: below this many records a parallel verify costs more (process start-up) than it saves
PARALLEL_MIN = 200_000
#: the hashed columns, in hash order (after the version and prev_hash)
HASHED = (
    "event_id",
    "time",
    "type",
    "outcome",
    "actor_user",
    "actor_username",
    "client_id",
    "network_address",
    "patient_id",
    "study_uid",
    "correlation_id",
    "body",
)
EXPORT_COLUMNS = ("seq", *HASHED[:-1], "objects", "details", "description", "hash")

#: ASCII-escaped: canonical as well, and ~40% faster to encode than ensure_ascii=False (verify speed)
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_encode_sorted = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_sha256 = hashlib.sha256


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 characters kept as they are."""
    return _encode_sorted(obj)


def record_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """The chain hash of a record whose hashed columns (in :data:`HASHED` order) are ``values``."""
    return _sha256(_encode([HASH_VERSION, prev_hash, *values]).encode("utf-8")).hexdigest()


def event_columns(event: AuditEvent) -> dict[str, Any]:
    """The stored (and hashed) columns of an event, without seq/prev_hash/hash."""
    a = event.actor or Actor()
    return {
        "event_id": event.event_id,
        "time": format_time(event.time),
        "type": event.type.value,
        "outcome": int(event.outcome),  # type: ignore[arg-type]
        "actor_user": a.user_id,
        "actor_username": a.username,
        "client_id": a.client_id,
        "network_address": a.network_address,
        "patient_id": event.first(ObjectKind.PATIENT),
        "study_uid": event.first(ObjectKind.STUDY),
        "correlation_id": event.correlation_id,
        "body": canonical(event.body()),
    }


def row_to_event(row: dict[str, Any]) -> AuditEvent:
    """Rebuild the event from a stored row (for XML / FHIR / syslog output)."""
    body = json.loads(row["body"]) if isinstance(row.get("body"), str) else row
    has_actor = any(row.get(k) for k in ("actor_user", "actor_username", "client_id", "network_address"))
    actor = (
        Actor(
            row.get("actor_user"),
            row.get("actor_username"),
            row.get("client_id"),
            row.get("network_address"),
            bool(body.get("is_requestor", True)),
        )
        if has_actor
        else None
    )
    return AuditEvent(
        type=AuditEventType(row["type"]),
        outcome=row["outcome"],
        actor=actor,
        objects=tuple(ParticipantObject.from_dict(o) for o in body.get("objects", ())),
        correlation_id=row.get("correlation_id"),
        details=body.get("details") or {},
        description=body.get("description"),
        time=parse_time(row["time"]),
        event_id=row["event_id"],
    )


@dataclass(frozen=True)
class Appended:
    """What an append returns (listeners such as the syslog spool receive each committed batch of them)."""

    seq: int
    hash: str
    event: AuditEvent


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


def checkpoint_payload(seq: int, hash_: str, created_at: str, kind: str, kid: str) -> bytes:
    return canonical({"v": 1, "seq": seq, "hash": hash_, "created_at": created_at, "kind": kind, "kid": kid}).encode(
        "utf-8"
    )


SCAN_SQL = f"SELECT seq, prev_hash, hash, {', '.join(HASHED)} FROM audit_events"  # noqa: S608 (constant)


def _scan(cur: Any, w: _Walk, cp_hash: dict[int, str], batch: int) -> tuple[Any, bool, int | None]:
    """The verify inner loop over an ordered cursor.  Advances ``w`` over every good record and
    returns (first bad row or None, whether that row's own hash was right, checkpoint mismatch seq).
    ``w.prev is None`` means "start wherever the cursor starts" (a parallel worker's range)."""
    encode, sha, version = _encode, _sha256, HASH_VERSION
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
            ok_self = sha(encode([version, prev_hash, *row[3:]]).encode("ascii")).hexdigest() == h
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


def _scan_range(url: str, lo: int, hi: int, cp_hash: dict[int, str], batch: int) -> dict[str, Any]:
    """One parallel verify worker: check records ``lo..hi`` on its own connection."""
    from bridge.store.db import engine as make_engine

    eng = make_engine(url)
    try:
        store = AuditStore(eng)
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # open the (snapshot) transaction first
            cur = store._cursor(conn, f"{SCAN_SQL} WHERE seq BETWEEN {int(lo)} AND {int(hi)} ORDER BY seq", batch)
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


class AuditStore:
    """Append, verify, query, export and archive the audit trail in the bridge database."""

    def __init__(
        self,
        engine: Engine,
        key: CheckpointKey | None = None,
        *,
        checkpoint_every: int = 1000,
        listeners: Iterable[Callable[[list[Appended]], None]] = (),
    ):
        self.engine = engine
        self.key = key
        self.checkpoint_every = checkpoint_every
        self.listeners = list(listeners)
        self._t = AuditEventRow.__table__
        self._pg = engine.dialect.name == "postgresql"
        ph = "%s" if engine.dialect.paramstyle in ("format", "pyformat") else "?"
        cols = ("seq", "prev_hash", "hash", *HASHED)
        lock = " FOR UPDATE" if self._pg else ""
        self._sql_head = f"SELECT last_seq, last_hash FROM audit_head WHERE id = 1{lock}"  # noqa: S608
        self._sql_insert = (
            f"INSERT INTO audit_events ({', '.join(cols)}) "  # noqa: S608 (constant)
            f"VALUES ({', '.join([ph] * len(cols))})"
        )
        self._sql_update_head = f"UPDATE audit_head SET last_seq = {ph}, last_hash = {ph} WHERE id = {ph}"  # noqa: S608

    # ------------------------------------------------------------------ writing
    def append(self, event: AuditEvent) -> Appended:
        """Record one event in one short transaction."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[Appended]:
        """Record a batch in one transaction (much faster than one by one)."""
        if not events:
            return []
        with write_transaction(self.engine) as conn:
            out = self._append_locked(conn, events)
        for listener in self.listeners:  # after the commit, once per batch
            listener(out)
        return out

    def _lock_head(self, conn: Connection) -> Any:
        stmt = select(AuditHead.last_seq, AuditHead.last_hash, AuditHead.base_seq, AuditHead.base_hash).where(
            AuditHead.id == HEAD_ID
        )
        if self._pg:
            stmt = stmt.with_for_update()
        head = conn.execute(stmt).first()
        if head is None:
            raise RuntimeError("audit_head row missing: run `pacs-bridge db upgrade` on this database")
        return head

    def _append_locked(self, conn: Connection, events: Sequence[AuditEvent]) -> list[Appended]:
        # The hot path talks to the DB-API cursor with prepared SQL text: SQLAlchemy's per-statement
        # overhead (~0.1 ms each) would otherwise cap single appends well below the 2,000/s target.
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.execute(self._sql_head)
            got = cur.fetchone()
            if got is None:
                raise RuntimeError("audit_head row missing: run `pacs-bridge db upgrade` on this database")
            seq, prev = got
            rows: list[tuple[Any, ...]] = []
            out: list[Appended] = []
            cps: list[tuple[int, str]] = []
            signing = self.key is not None and self.key.private is not None
            for ev in events:
                cols = event_columns(ev)
                values = [cols[k] for k in HASHED]
                seq += 1
                h = record_hash(prev, values)
                rows.append((seq, prev, h, *values))
                out.append(Appended(seq, h, ev))
                prev = h
                if signing and seq % self.checkpoint_every == 0:
                    cps.append((seq, h))
            if len(rows) == 1:
                cur.execute(self._sql_insert, rows[0])
            else:
                cur.executemany(self._sql_insert, rows)
            cur.execute(self._sql_update_head, (seq, prev, HEAD_ID))
        finally:
            cur.close()
        for cp_seq, cp_hash in cps:
            self._insert_checkpoint(conn, cp_seq, cp_hash, "periodic")
        return out

    def _insert_checkpoint(self, conn: Connection, seq: int, hash_: str, kind: str) -> dict[str, Any]:
        assert self.key is not None
        created = format_time(dt.datetime.now(dt.UTC))
        sig = self.key.sign(checkpoint_payload(seq, hash_, created, kind, self.key.kid))
        row = {
            "seq": seq,
            "hash": hash_,
            "created_at": created,
            "kind": kind,
            "kid": self.key.kid,
            "alg": ALG,
            "signature": sig,
        }
        conn.execute(insert(AuditCheckpoint), row)
        return row

    def checkpoint(self, kind: str = "manual") -> dict[str, Any] | None:
        """Sign the current head now (e.g. from a timer, so quiet periods are covered too)."""
        if self.key is None:
            raise RuntimeError("no checkpoint key configured")
        with write_transaction(self.engine) as conn:
            head = self._lock_head(conn)
            if head.last_seq == 0:
                return None
            return self._insert_checkpoint(conn, head.last_seq, head.last_hash, kind)

    # ------------------------------------------------------------------ verifying
    def verify(
        self, key: CheckpointKey | None = None, *, batch: int = 20_000, workers: int | None = None
    ) -> VerifyReport:
        """Walk the whole chain; stop at the first problem and name it (see :class:`VerifyReport`).

        Long chains (>= PARALLEL_MIN records) are checked by ``workers`` processes (default: the
        CPU count, at most 4), each over a contiguous seq range, and stitched at the range edges;
        hashing is CPU-bound and the GIL would otherwise cap it at one core."""
        import time

        t0 = time.perf_counter()
        key = key or self.key
        with self.engine.connect() as conn:
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
            bad = self._check_checkpoint_signatures(cps, key)
            if bad:
                return self._finish(
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
            if not self._parallel_walk(conn, walk, cp_hash, workers, batch):
                # sequential: also the exact diagnosis whenever a parallel range found a problem
                walk = _Walk(prev=head["base_hash"], prev_prev=None, prev_seq=head["base_seq"])
                problem = self._walk(conn, walk, cp_hash, batch)
            rep.records = walk.count
            if problem:
                return self._finish(rep, t0, *problem)
            # the archive boundary must itself be covered by a signed archive checkpoint
            if head["base_seq"] > 0 and not any(
                c["kind"] == "archive" and c["seq"] == head["base_seq"] and c["hash"] == head["base_hash"] for c in cps
            ):
                return self._finish(
                    rep,
                    t0,
                    "edited",
                    head["base_seq"] + 1,
                    None,
                    "chain base (archive boundary) is not covered by a signed archive checkpoint",
                )
            for c in cps:
                if c["seq"] > head["base_seq"] and c["seq"] not in walk.seen_cp:
                    return self._finish(
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
                    return self._finish(
                        rep,
                        t0,
                        "deleted",
                        walk.prev_seq + 1,
                        None,
                        f"records {walk.prev_seq + 1}..{head['last_seq']} are missing "
                        f"(chain head says {head['last_seq']})",
                    )
                return self._finish(
                    rep,
                    t0,
                    "inserted",
                    head["last_seq"] + 1,
                    None,
                    f"records after the chain head ({head['last_seq']}) up to "
                    f"{walk.prev_seq} were added outside the audit writer",
                )
        return self._finish(rep, t0, None, None, None, f"{rep.records} records, {rep.checkpoints} checkpoints OK")

    @staticmethod
    def _finish(
        rep: VerifyReport, t0: float, kind: str | None, seq: int | None, event_id: str | None, message: str
    ) -> VerifyReport:
        import time

        rep.ok = kind is None
        rep.kind, rep.seq, rep.event_id, rep.message = kind, seq, event_id, message
        rep.seconds = time.perf_counter() - t0
        return rep

    @staticmethod
    def _check_checkpoint_signatures(cps: list[dict[str, Any]], key: CheckpointKey | None) -> dict[str, Any] | None:
        if key is None:
            return None
        for c in cps:
            payload = checkpoint_payload(c["seq"], c["hash"], c["created_at"], c["kind"], c["kid"])
            if c["kid"] != key.kid or not key.verify(payload, c["signature"]):
                return c
        return None

    def _parallel_walk(
        self, conn: Connection, w: _Walk, cp_hash: dict[int, str], workers: int | None, batch: int
    ) -> bool:
        """Verify in worker processes; True if every range is clean and the ranges link up
        (``w`` then describes the whole chain), False to fall back to the sequential walk."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        workers = workers or min(os.cpu_count() or 1, 4)
        url = self.engine.url
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
                parts = list(pool.map(_scan_range, [url_text] * n, [a for a, _ in ranges], [b for _, b in ranges],
                                      [cp_hash] * n, [batch] * n))
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

    def _cursor(self, conn: Connection, sql: str, batch: int) -> Any:
        # DB-API cursor, plain tuples: SQLAlchemy Row objects would halve the verify rate.  On
        # PostgreSQL a named (server-side) cursor streams instead of loading the table into memory.
        dbapi = conn.connection.dbapi_connection
        cur = dbapi.cursor(name="pacs_bridge_audit_verify") if self._pg else dbapi.cursor()  # type: ignore[union-attr]
        if self._pg:
            cur.itersize = batch
        cur.execute(sql)
        return cur

    def _walk(
        self, conn: Connection, w: _Walk, cp_hash: dict[int, str], batch: int
    ) -> tuple[str, int, str | None, str] | None:
        cur = self._cursor(conn, SCAN_SQL + " ORDER BY seq", batch)
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
                return self._diagnose(conn, w, bad, ok_self)
            return None
        finally:
            cur.close()

    def _diagnose(self, conn: Connection, w: _Walk, row: Any, ok_self: bool) -> tuple[str, int, str | None, str]:
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

    # ------------------------------------------------------------------ reading
    def query(
        self,
        *,
        user: str | None = None,
        patient: str | None = None,
        study: str | None = None,
        types: Sequence[str] | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        after_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching every given filter (``user`` matches ``sub@iss`` or the username).

        A value is also looked up as it would have been stored (bridge/core/audit_events.py): an
        auditor asking for patient ``Basic 4711`` finds the records whose patient id was replaced
        by that value's redaction marker, and a too-long value finds its cut form."""
        t = AuditEventRow
        stmt = select(self._t)
        if user:
            stmt = stmt.where(t.actor_user.in_(search_terms(user, "user_id"))
                              | t.actor_username.in_(search_terms(user, "username")))
        if patient:
            stmt = stmt.where(t.patient_id.in_(search_terms(patient, "patient_id")))
        if study:
            stmt = stmt.where(t.study_uid.in_(search_terms(study, "study_uid")))
        if types:
            stmt = stmt.where(t.type.in_([AuditEventType(x).value for x in types]))
        if since:
            stmt = stmt.where(t.time >= format_time(since))
        if until:
            stmt = stmt.where(t.time < format_time(until))
        if after_seq is not None:
            stmt = stmt.where(t.seq > after_seq)
        stmt = stmt.order_by(t.seq.desc() if newest_first else t.seq)
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        return list(reversed(self.query(limit=n, newest_first=True)))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self._t)).scalar() or 0)

    # ------------------------------------------------------------------ retention
    def archive(self, before: dt.datetime, path: Path) -> int:
        """Move every record older than ``before`` to the JSONL file ``path``; return how many.

        Refuses (RuntimeError) if the chain does not verify: archiving would launder tampering.
        """
        if self.key is None or self.key.private is None:
            raise RuntimeError("archiving needs the checkpoint signing key")
        report = self.verify()
        if not report.ok:
            raise RuntimeError(f"audit chain does not verify, not archiving: {report.message}")
        cutoff = format_time(before)
        with write_transaction(self.engine) as conn:
            head = self._lock_head(conn)
            first_kept = conn.execute(select(func.min(AuditEventRow.seq)).where(AuditEventRow.time >= cutoff)).scalar()
            last = (first_kept - 1) if first_kept is not None else head.last_seq
            if last <= head.base_seq:
                return 0
            last_hash = conn.execute(select(AuditEventRow.hash).where(AuditEventRow.seq == last)).scalar_one()
            cp = self._insert_checkpoint(conn, last, last_hash, "archive")
            rows = conn.execute(select(self._t).where(AuditEventRow.seq <= last).order_by(AuditEventRow.seq)).mappings()
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            n = 0
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(
                    canonical(
                        {
                            "archive": {
                                "from_seq": head.base_seq + 1,
                                "to_seq": last,
                                "prev_hash": head.base_hash,
                                "hash_version": HASH_VERSION,
                            }
                        }
                    )
                    + "\n"
                )
                for r in rows:
                    f.write(canonical(dict(r)) + "\n")
                    n += 1
                f.write(canonical({"checkpoint": cp}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)  # the archive is durable before anything is deleted
            conn.execute(delete(AuditEventRow).where(AuditEventRow.seq <= last))
            conn.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(base_seq=last, base_hash=last_hash))
            return n

    # ------------------------------------------------------------------ export
    @staticmethod
    def export_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Flatten stored rows for export: body fields become columns."""
        for r in rows:
            body = json.loads(r["body"])
            yield {
                "seq": r["seq"],
                **{k: r[k] for k in HASHED[:-1]},
                "objects": body.get("objects", []),
                "details": body.get("details", {}),
                "description": body.get("description"),
                "hash": r["hash"],
            }


def export_json(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    out.write("[")
    for i, r in enumerate(AuditStore.export_rows(rows)):
        out.write(("," if i else "") + "\n" + json.dumps(r, ensure_ascii=False))
        n += 1
    out.write("\n]\n")
    return n


#: first characters that make a spreadsheet read a cell as a formula (OWASP "CSV Injection"):
#: = + - @, tab and CR (and LF), and their full-width forms, which some spreadsheets fold to ASCII
FORMULA_LEADS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
#: Unicode categories skipped before the formula check: separators, controls, format characters
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def csv_cell(value: str) -> str:
    """``value`` safe to open in a spreadsheet: a cell whose first visible character could start
    a formula is prefixed with ``'`` (the cell then shows as text; the value stays readable).
    Invisible leading characters (any space, control or format character: no-break space, BOM,
    zero-width space ...) are skipped first: a spreadsheet may drop them and run the rest."""
    i = 0
    while i < len(value) and unicodedata.category(value[i]) in _INVISIBLE:
        i += 1
    if value[:1] in FORMULA_LEADS or value[i:i + 1] in FORMULA_LEADS:
        return "'" + value
    return value


def search_terms(value: str, field: str) -> list[str]:
    """``value`` and, if different, its stored form (see :meth:`AuditStore.query`)."""
    from bridge.core.audit_events import FIELD_LIMITS, normalise_id

    stored = normalise_id(value, FIELD_LIMITS[field])
    terms = [stored] if stored is not None else []
    try:  # the value as typed, for records written before normalisation (if a database can take it)
        value.encode("utf-8")
        if "\x00" not in value and value != stored:
            terms.append(value)
    except UnicodeEncodeError:
        pass
    return terms


def export_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """CSV with one column per field; objects and details as JSON text.  Cells that a spreadsheet
    would run as a formula are neutralised by :func:`csv_cell` (CSV injection)."""
    w = csv.writer(out)
    w.writerow(EXPORT_COLUMNS)
    n = 0
    for r in AuditStore.export_rows(rows):
        cells = []
        for c in EXPORT_COLUMNS:
            v = r[c]
            v = "" if v is None else json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else str(v)
            cells.append(v if c in ("seq", "outcome") else csv_cell(v))
        w.writerow(cells)
        n += 1
    return n


def verify_archive(path: Path, key: CheckpointKey | None = None) -> VerifyReport:
    """Check an archive file on its own: its chain and its signed closing checkpoint."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if len(lines) < 2:
        return VerifyReport(False, kind="deleted", message=f"{path}: archive is truncated")
    header = json.loads(lines[0]).get("archive") or {}
    closing = json.loads(lines[-1]).get("checkpoint")
    prev, expected = header.get("prev_hash", GENESIS_HASH), header.get("from_seq", 1)
    rep = VerifyReport(True, signatures_checked=key is not None)
    for line in lines[1:-1]:
        r = json.loads(line)
        if r["prev_hash"] != prev or r["seq"] != expected or record_hash(prev, [r[k] for k in HASHED]) != r["hash"]:
            rep.ok, rep.kind, rep.seq, rep.event_id = False, "edited", r["seq"], r.get("event_id")
            rep.message = f"{path}: record {r['seq']} does not verify"
            return rep
        prev, expected, rep.records = r["hash"], expected + 1, rep.records + 1
    if not closing or closing["hash"] != prev or closing["seq"] != expected - 1:
        return VerifyReport(
            False,
            records=rep.records,
            kind="deleted",
            message=f"{path}: closing checkpoint does not match the last record",
        )
    if key is not None and not key.verify(
        checkpoint_payload(closing["seq"], closing["hash"], closing["created_at"], closing["kind"], closing["kid"]),
        closing["signature"],
    ):
        return VerifyReport(
            False, records=rep.records, kind="checkpoint", message=f"{path}: closing checkpoint signature invalid"
        )
    rep.message = f"{path}: {rep.records} records OK"
    return rep


def open_store(settings: Any, engine: Engine | None = None, *,
               listeners: Iterable[Callable[[list[Appended]], None]] = (), signing: bool = True) -> AuditStore:
    """The audit store as configured: the database of ``store.url`` and the checkpoint key of
    ``audit.checkpoint_key_file`` (created on first use when ``signing``; verification only
    needs the ``.pub`` file).  Everyone builds the store here, so checkpoints get signed.
    Shipping needs nothing from writers: ``serve`` reads new records from the database
    (bridge/audit/jobs.py)."""
    from bridge.audit.keys import public_path
    from bridge.store.db import engine as make_engine

    key_file = Path(settings.audit.checkpoint_key_file)
    if signing:
        key: CheckpointKey | None = CheckpointKey.load_or_create(key_file)
    elif key_file.exists():
        key = CheckpointKey.load_public(key_file)
    elif public_path(key_file).exists():
        key = CheckpointKey.load_public(public_path(key_file))
    else:
        key = None
    return AuditStore(engine or make_engine(settings.store.url), key,
                      checkpoint_every=settings.audit.checkpoint_every, listeners=listeners)
