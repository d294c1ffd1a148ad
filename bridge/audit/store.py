"""The tamper-evident audit store: append to and read the hash chain in the bridge database.

The chain's record form and its one hash function are in bridge/audit/chain.py; checking the
chain is bridge/audit/verify.py, retention bridge/audit/archive.py, JSON/CSV output
bridge/audit/export.py.  :class:`AuditStore` keeps ``verify``/``archive`` as methods that call
those modules, so callers hold one object for one database.

Concurrency: appends lock the one ``audit_head`` row (``SELECT ... FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so seq numbers are gap-free and the chain never forks across
processes or replicas.  A single append is one short transaction; :meth:`AuditStore.append_many`
writes a batch in one.  Every ``checkpoint_every`` records the writer signs a checkpoint
(bridge/audit/keys.py) that the verifier checks the chain against.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select

from bridge.audit import archive as _archive
from bridge.audit import verify as _verify
from bridge.audit.chain import HASHED, checkpoint_payload, event_columns, record_hash
from bridge.audit.keys import ALG, CheckpointKey, KeyFileError
from bridge.audit.verify import HEAD_ID, VerifyReport
from bridge.core.audit_codes import AuditEventType, ObjectKind
from bridge.core.audit_events import AuditEvent, format_time
from bridge.core.envelope import KeyProvider
from bridge.store.db import StoreError, write_transaction
from bridge.store.models import AuditCheckpoint, AuditEventRow, AuditHead

_NO_HEAD = "audit_head row missing: run `pacs-bridge db upgrade` on this database"


@dataclass(frozen=True)
class Appended:
    """What an append returns (listeners such as the syslog spool receive each committed batch of them)."""

    seq: int
    hash: str
    event: AuditEvent


class AuditStore:
    """Append to, read, verify and archive the audit trail in the bridge database."""

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
        #: seals the archives this store writes (bridge/kek.py ``audit_file_keys``); None: plaintext
        self.file_keys: KeyProvider | None = None
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
            raise StoreError(_NO_HEAD)
        return head

    def _append_locked(self, conn: Connection, events: Sequence[AuditEvent]) -> list[Appended]:
        # The hot path talks to the DB-API cursor with prepared SQL text: SQLAlchemy's per-statement
        # overhead (~0.1 ms each) would otherwise cap single appends well below the 2,000/s target.
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.execute(self._sql_head)
            got = cur.fetchone()
            if got is None:
                raise StoreError(_NO_HEAD)
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
            raise KeyFileError("no checkpoint key configured (audit.checkpoint_key_file)")
        with write_transaction(self.engine) as conn:
            head = self._lock_head(conn)
            if head.last_seq == 0:
                return None
            return self._insert_checkpoint(conn, head.last_seq, head.last_hash, kind)

    # ------------------------------------------------------------------ verifying
    def verify(
        self, key: CheckpointKey | None = None, *, batch: int = 20_000, workers: int | None = None
    ) -> VerifyReport:
        """Walk the whole chain; stop at the first problem and name it (bridge/audit/verify.py)."""
        return _verify.verify_chain(self, key, batch=batch, workers=workers)

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

    def mentioning(
        self,
        kind: ObjectKind,
        values: Iterable[str],
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Records naming a participant object of ``kind`` (patient or study) whose id is one of
        ``values``, in any position, oldest first.

        :meth:`query` filters on the indexed column, which holds only an event's *first* patient
        and study; a PACS event about a listing names several (bridge/pacs/audit_shipper.py), and
        "who viewed this patient" must find the second one too.  The body is canonical JSON
        (bridge/audit/chain.py), so an object is the exact text ``"id":<id>,"kind":"<kind>"``;
        the text search is only a pre-filter (SQLite's LIKE ignores ASCII case): every hit is
        checked against the parsed objects.  Each value is also looked up in its stored form
        (:func:`search_terms`)."""
        column = {ObjectKind.PATIENT: AuditEventRow.patient_id, ObjectKind.STUDY: AuditEventRow.study_uid}[kind]
        field = {ObjectKind.PATIENT: "patient_id", ObjectKind.STUDY: "study_uid"}[kind]
        terms = sorted({t for v in values for t in search_terms(v, field)})
        if not terms:
            return []
        wanted = set(terms)
        t = AuditEventRow
        found: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(terms, 200):
                cond = column.in_(chunk)
                for term in chunk:
                    fragment = '"id":' + json.dumps(term, ensure_ascii=False) + f',"kind":"{kind.value}"'
                    cond = cond | t.body.contains(fragment, autoescape=True)
                stmt = select(self._t).where(cond)
                if since:
                    stmt = stmt.where(t.time >= format_time(since))
                if until:
                    stmt = stmt.where(t.time < format_time(until))
                for r in conn.execute(stmt).mappings():
                    found[r["seq"]] = dict(r)
        return [r for _, r in sorted(found.items())
                if r[field] in wanted or wanted & set(object_ids(r, kind))]

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        return list(reversed(self.query(limit=n, newest_first=True)))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self._t)).scalar() or 0)

    # ------------------------------------------------------------------ retention
    def archive(self, before: dt.datetime, path: Path) -> int:
        """Move every record older than ``before`` to the JSONL file ``path``; return how many
        (bridge/audit/archive.py; refuses a chain that does not verify)."""
        return _archive.archive(self, before, path)


def object_ids(row: dict[str, Any], kind: ObjectKind) -> list[str]:
    """The ids of the participant objects of ``kind`` in a stored row (its parsed body)."""
    try:
        objects = json.loads(row["body"]).get("objects") or []
    except (ValueError, TypeError, AttributeError):
        return []
    return [o["id"] for o in objects
            if isinstance(o, dict) and o.get("kind") == kind.value and isinstance(o.get("id"), str)]


def _chunks(items: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


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


def open_store(settings: Any, engine: Engine | None = None, *,
               listeners: Iterable[Callable[[list[Appended]], None]] = (), signing: bool = True) -> AuditStore:
    """The audit store as configured: the database of ``store.url`` and the checkpoint key of
    ``audit.checkpoint_key_file`` (created on first use when ``signing``, encrypted under
    ``tokens.key_encryption_key``; verification only needs the ``.pub`` file).  Everyone builds
    the store here, so checkpoints get signed.  Shipping needs nothing from writers: ``serve``
    reads new records from the database (bridge/audit/jobs.py)."""
    from bridge.audit.keys import public_path
    from bridge.store.db import engine_for

    key_file = Path(settings.audit.checkpoint_key_file)
    if signing:
        from bridge.kek import KeyEncryptor

        kek = settings.tokens.key_encryption_key
        encryptor = KeyEncryptor.from_settings(settings) if kek else None
        key: CheckpointKey | None = CheckpointKey.load_or_create(key_file, encryptor)
    elif key_file.exists():
        key = CheckpointKey.load_public(key_file)
    elif public_path(key_file).exists():
        key = CheckpointKey.load_public(public_path(key_file))
    else:
        key = None
    store = AuditStore(engine or engine_for(settings), key,
                      checkpoint_every=settings.audit.checkpoint_every, listeners=listeners)
    from bridge.kek import audit_file_keys

    store.file_keys = audit_file_keys(settings)
    return store
