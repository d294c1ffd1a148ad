"""Retention: move expiring audit records to a JSONL archive file that verifies on its own.

:func:`archive` verifies the chain first (archiving a broken chain would launder tampering),
signs an archive checkpoint at the last expiring record, writes those records plus that
checkpoint to the file (fsync, then rename), and only then deletes them and moves the chain's base
(``audit_head.base_seq/base_hash``) to the last archived record, so the remaining chain still
verifies from that boundary.  :func:`verify_archive` checks a file with the same hash function and
checkpoint payload as the live chain (bridge/audit/chain.py).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update

from bridge.audit.chain import GENESIS_HASH, HASH_VERSION, HASHED, canonical, checkpoint_payload, record_hash
from bridge.audit.keys import CheckpointKey, KeyFileError
from bridge.audit.verify import HEAD_ID, AuditChainBroken, VerifyReport
from bridge.core.audit_events import format_time
from bridge.core.envelope import EnvelopeError, KeyProvider
from bridge.core.sealed import AUDIT_ARCHIVE, is_sealed, open_blob, seal_blob
from bridge.store.db import write_transaction
from bridge.store.models import AuditEventRow, AuditHead

if TYPE_CHECKING:
    from bridge.audit.store import AuditStore


def archive(store: AuditStore, before: dt.datetime, path: Path) -> int:
    """Move every record older than ``before`` to the JSONL file ``path``; return how many.

    Refuses (:class:`AuditChainBroken`) if the chain does not verify: archiving would launder tampering.
    """
    if store.key is None or store.key.private is None:
        raise KeyFileError("archiving needs the checkpoint signing key (audit.checkpoint_key_file)")
    report = store.verify()
    if not report.ok:
        raise AuditChainBroken(f"audit chain does not verify, not archiving: {report.message}")
    cutoff = format_time(before)
    with write_transaction(store.engine) as conn:
        head = store._lock_head(conn)
        first_kept = conn.execute(select(func.min(AuditEventRow.seq)).where(AuditEventRow.time >= cutoff)).scalar()
        last = (first_kept - 1) if first_kept is not None else head.last_seq
        if last <= head.base_seq:
            return 0
        last_hash = conn.execute(select(AuditEventRow.hash).where(AuditEventRow.seq == last)).scalar_one()
        cp = store._insert_checkpoint(conn, last, last_hash, "archive")
        expiring = select(AuditEventRow.__table__).where(AuditEventRow.seq <= last).order_by(AuditEventRow.seq)
        rows = conn.execute(expiring).mappings()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        n = 0
        keys = store.file_keys
        # sealed (bridge/core/sealed.py) when the store has file keys: the body is built in memory
        # first (an archive of a retention period; the plaintext never touches the disk)
        with (io.StringIO() if keys is not None else open(tmp, "w", encoding="utf-8")) as f:
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
            if keys is not None:
                sealed = seal_blob(keys, path.name, AUDIT_ARCHIVE, f.getvalue().encode("utf-8"))  # type: ignore[union-attr]
                with open(tmp, "wb", opener=lambda p, fl: os.open(p, fl, 0o600)) as out:
                    out.write(sealed)
                    out.flush()
                    os.fsync(out.fileno())
            else:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)  # the archive is durable before anything is deleted
        conn.execute(delete(AuditEventRow).where(AuditEventRow.seq <= last))
        conn.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(base_seq=last, base_hash=last_hash))
        return n


def read_archive(path: Path, keys: KeyProvider | None = None) -> str:
    """The text of an archive file, opening a sealed one with ``keys`` (the bridge's KEK); a
    plaintext archive of an older bridge is read as it is."""
    raw = Path(path).read_bytes()
    if not is_sealed(raw):
        return raw.decode("utf-8")
    if keys is None:
        raise EnvelopeError("unknown-key", f"{path}: the archive is encrypted; open it with the bridge's "
                            "configuration (tokens.key_encryption_key)")
    return open_blob(keys, Path(path).name, AUDIT_ARCHIVE, raw).decode("utf-8")


def verify_archive(path: Path, key: CheckpointKey | None = None, keys: KeyProvider | None = None) -> VerifyReport:
    """Check an archive file on its own: its chain and its signed closing checkpoint (a sealed one
    is opened with ``keys`` first; an altered or renamed sealed file does not open)."""
    try:
        lines = read_archive(path, keys).splitlines()
    except EnvelopeError as exc:
        return VerifyReport(False, kind="edited", message=f"{path}: {exc}")
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
    signer = key.for_kid(closing["kid"]) if key is not None else None  # current or retired key
    if key is not None and (signer is None or not signer.verify(
        checkpoint_payload(closing["seq"], closing["hash"], closing["created_at"], closing["kind"], closing["kid"]),
        closing["signature"],
    )):
        return VerifyReport(
            False, records=rep.records, kind="checkpoint", message=f"{path}: closing checkpoint signature invalid"
        )
    rep.message = f"{path}: {rep.records} records OK"
    return rep
