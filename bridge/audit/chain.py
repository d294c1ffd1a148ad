"""The audit chain's record form: canonical JSON, the ONE hash function, checkpoint payloads.

Record *n* stores ``prev_hash`` (the hash of record *n-1*; :data:`GENESIS_HASH` for the first) and
``hash = SHA-256(canonical JSON [version, prev_hash, event_id, time, type, outcome, actor_user,
actor_username, client_id, network_address, patient_id, study_uid, correlation_id, body])`` (a
JSON array in this fixed order, compact separators, non-ASCII escaped as \\uXXXX; ``body`` is
itself the canonical JSON, sorted keys, of the objects/details/description).  ``seq`` is the
position and is deliberately *not* hashed: the order lives in the ``prev_hash`` links, which lets
the verifier (bridge/audit/verify.py) tell a reordering from an edit.

Everything that writes or checks a record (appends, the database walk, archive files, the
benchmarks) hashes through :func:`record_hash`, so the chain's definition lives here only.
Checkpoints: the writer signs :func:`checkpoint_payload` with Ed25519 (bridge/audit/keys.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from bridge.core.audit_codes import AuditEventType, ObjectKind
from bridge.core.audit_events import Actor, AuditEvent, ParticipantObject, format_time, parse_time

GENESIS_HASH = "0" * 64
HASH_VERSION = 1
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

#: ASCII-escaped: canonical as well, and ~40% faster to encode than ensure_ascii=False (verify speed)
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_encode_sorted = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_sha256 = hashlib.sha256


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 characters kept as they are."""
    return _encode_sorted(obj)


def record_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """The chain hash of a record whose hashed columns (in :data:`HASHED` order) are ``values``."""
    return _sha256(_encode([HASH_VERSION, prev_hash, *values]).encode("ascii")).hexdigest()


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



def checkpoint_payload(seq: int, hash_: str, created_at: str, kind: str, kid: str) -> bytes:
    return canonical({"v": 1, "seq": seq, "hash": hash_, "created_at": created_at, "kind": kind, "kid": kid}).encode(
        "utf-8"
    )
