"""The audit event model, and the guard that keeps secrets out of the audit trail.

An event says *who* (actor), *did what* (type + outcome), *to what* (participant objects),
*when* (UTC) and *in which request* (correlation id).  Tokens are identified by their ``jti``
only; the token itself, passwords, OTPs, client secrets and authorization headers must never be
recorded (an audit trail is read by many people and kept for years).  Two defences:

* :func:`redact` rewrites free-form ``details``: values under secret-looking keys become
  ``[redacted]``, JWT-looking strings and ``Bearer``/``Basic`` credentials inside any string
  become ``[redacted-jwt]``/``[redacted-credential]``;
* identifiers (user, object ids, ...) are structured data: a JWT there is a programming error and
  :class:`AuditEvent` refuses it with ValueError instead of storing a misleading placeholder.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.audit.codes import BREAK_GLASS_EVENTS, AuditEventType, ObjectKind, Outcome, codes_for

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
REDACTED = "[redacted]"

#: words (of a key split at _ - . and camelCase) that mark a secret
_SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "pass", "otp", "totp", "hotp", "secret", "token",
    "tokens", "authorization", "cookie", "credential", "credentials", "apikey", "privatekey",
    "assertion", "verifier", "pin",
})
_SECRET_JOINED = ("accesstoken", "refreshtoken", "idtoken", "clientsecret", "privatekey", "apikey",
                  "sessionid", "bearer")
#: keys that mention tokens but hold no secret
_ALLOWED_WORDS = frozenset({"jti", "type", "endpoint", "count", "lifetime", "exp"})

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
                  r"|[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]+")
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|DPoP)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def _key_words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """True for keys like ``password``, ``client_secret``, ``accessToken``, ``Authorization``,
    ``otp``; False for ``token_jti``, ``token_type``, ``token_endpoint``."""
    words = _key_words(key)
    if not words:
        return False
    joined = "".join(words)
    if any(w in _ALLOWED_WORDS for w in words) and not any(s in joined for s in ("secret", "password")):
        return False
    return any(w in _SECRET_WORDS for w in words) or any(s in joined for s in _SECRET_JOINED)


def looks_like_jwt(value: str) -> bool:
    return bool(_JWT.search(value))


def redact_text(value: str) -> str:
    value = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} [redacted-credential]", value)
    return _JWT.sub("[redacted-jwt]", value)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dict/list/scalars) with every secret removed; see the module docstring."""
    if isinstance(value, Mapping):
        return {str(k): (REDACTED if is_secret_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_text(str(value))


def _check_id(what: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if looks_like_jwt(value) or _AUTH_SCHEME.search(value):
        raise ValueError(f"{what} looks like a token or credential; record the token's jti instead")
    return value


def format_time(t: dt.datetime) -> str:
    """The one text form of audit times (UTC, microseconds, 'Z'): sortable and hashed as is."""
    if t.tzinfo is None:
        raise ValueError("audit time must be timezone-aware")
    return t.astimezone(dt.UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Actor:
    """Who did it.  ``user_id`` is ``sub@iss`` (stable across renames); for events the bridge does
    by itself (sync, key rotation) the actor is the bridge: leave ``user_id`` None and set
    ``client_id`` to the bridge's name."""

    user_id: str | None = None
    username: str | None = None
    client_id: str | None = None
    network_address: str | None = None
    is_requestor: bool = True

    def __post_init__(self) -> None:
        for name in ("user_id", "username", "client_id", "network_address"):
            _check_id(f"actor.{name}", getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "username": self.username, "client_id": self.client_id,
                "network_address": self.network_address, "is_requestor": self.is_requestor}


@dataclass(frozen=True)
class ParticipantObject:
    """What it was done to.  ``detail`` holds A.5 ParticipantObjectDetail/Description values
    (e.g. ``{"NumberOfInstances": "12"}``)."""

    kind: ObjectKind
    id: str
    name: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ObjectKind(self.kind))
        if not self.id:
            raise ValueError(f"participant object {self.kind.value}: id must not be empty")
        _check_id(f"object {self.kind.value}.id", self.id)
        _check_id(f"object {self.kind.value}.name", self.name)
        object.__setattr__(self, "detail", redact(dict(self.detail)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "id": self.id}
        if self.name is not None:
            out["name"] = self.name
        if self.detail:
            out["detail"] = dict(self.detail)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParticipantObject:
        return cls(ObjectKind(d["kind"]), d["id"], d.get("name"), d.get("detail") or {})


# short constructors: what callers write most often
def patient(patient_id: str, name: str | None = None) -> ParticipantObject:
    return ParticipantObject(ObjectKind.PATIENT, patient_id, name)


def study(study_uid: str, **detail: str) -> ParticipantObject:
    return ParticipantObject(ObjectKind.STUDY, study_uid, None, detail)


def user(subject: str, username: str | None = None) -> ParticipantObject:
    return ParticipantObject(ObjectKind.USER, subject, username)


def role(name: str) -> ParticipantObject:
    return ParticipantObject(ObjectKind.ROLE, name)


def group(dn: str) -> ParticipantObject:
    return ParticipantObject(ObjectKind.GROUP, dn)


def rule(rule_id: str) -> ParticipantObject:
    return ParticipantObject(ObjectKind.RULE, rule_id)


def token(jti: str) -> ParticipantObject:
    """A token, by its jti: never pass the token itself (refused)."""
    return ParticipantObject(ObjectKind.TOKEN, jti)


@dataclass(frozen=True)
class AuditEvent:
    """One audit event.  ``outcome`` defaults to the type's usual outcome (codes.py)."""

    type: AuditEventType
    outcome: Outcome | None = None
    actor: Actor | None = None
    objects: tuple[ParticipantObject, ...] = ()
    correlation_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None
    time: dt.datetime = field(default_factory=utcnow)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        et = AuditEventType(self.type)
        object.__setattr__(self, "type", et)
        object.__setattr__(self, "outcome", Outcome(codes_for(et).default_outcome
                                                     if self.outcome is None else self.outcome))
        object.__setattr__(self, "objects", tuple(self.objects))
        object.__setattr__(self, "details", redact(dict(self.details)))
        if self.description is not None:
            object.__setattr__(self, "description", redact_text(self.description))
        _check_id("correlation_id", self.correlation_id)
        if self.time.tzinfo is None:
            raise ValueError("audit event time must be timezone-aware (UTC)")

    @property
    def purpose_of_use(self) -> str | None:
        return "BTG" if self.type in BREAK_GLASS_EVENTS else None

    def first(self, kind: ObjectKind) -> str | None:
        return next((o.id for o in self.objects if o.kind == kind), None)

    def body(self) -> dict[str, Any]:
        """What is stored beside the indexed columns (and hashed with them)."""
        return {
            "objects": [o.to_dict() for o in self.objects],
            "details": dict(self.details),
            "description": self.description,
            "is_requestor": self.actor.is_requestor if self.actor else True,
        }

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready form (exports, the API)."""
        return {
            "event_id": self.event_id,
            "time": format_time(self.time),
            "type": self.type.value,
            "outcome": int(self.outcome),  # type: ignore[arg-type]
            "actor": self.actor.to_dict() if self.actor else None,
            "correlation_id": self.correlation_id,
            **self.body(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditEvent:
        actor = d.get("actor")
        return cls(
            type=AuditEventType(d["type"]),
            outcome=Outcome(int(d["outcome"])),
            actor=Actor(**actor) if actor else None,
            objects=tuple(ParticipantObject.from_dict(o) for o in d.get("objects", ())),
            correlation_id=d.get("correlation_id"),
            details=d.get("details") or {},
            description=d.get("description"),
            time=parse_time(d["time"]),
            event_id=d["event_id"],
        )
