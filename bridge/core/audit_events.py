"""The audit event model, and the guards that keep secrets and hostile text out of the audit trail.

An event says *who* (actor), *did what* (type + outcome), *to what* (participant objects),
*when* (UTC) and *in which request* (correlation id).  Tokens are identified by their ``jti``
only; the token itself, passwords, OTPs, client secrets and authorization headers must never be
recorded (an audit trail is read by many people and kept for years).

Much of what is recorded is chosen by someone else: a PatientID or PatientName is whatever an
uploader or a modality wrote, a username whatever was typed, a URI whatever a client sent.  The
model therefore **never refuses** an event because of a value (refusing would let anyone hide
their accesses to a patient by giving it an odd ID); it normalises the value and keeps the event:

* :func:`redact` rewrites free-form ``details``: values under secret-looking keys become
  ``[redacted]``, JWT-looking strings and ``Bearer``/``Basic`` credentials inside any string
  become ``[redacted-jwt]``/``[redacted-credential]``;
* an identifier (user, client, address, object id/name, correlation id) that looks like a token
  or credential is replaced *whole* by :func:`redaction_marker` (``redacted-sha256:`` + 16 hex of
  a SHA-256 of the value).  The marker is stable, so :meth:`bridge.audit.store.AuditStore.query`
  finds the record when an auditor searches for the original value.  The hash is deliberately not
  keyed: every writer (the bridge, the Orthanc plugin on another host) and every reader must
  compute the same marker without sharing a secret, a patient ID is not a secret, and 64 bits of
  a hash do not give back a token's signature.  (Weakness accepted: a reader who guesses a
  low-entropy ``Basic user:password`` can confirm the guess; such a value is an attack on the
  trail, not a credential anyone uses for the PACS.)
* other hostile text is made safe for every output (database, JSON, DICOM XML, CSV, syslog):
  odd types become strings, lone surrogates and control / format characters become ``\\xNN``
  escapes (free text keeps tab, CR and LF), over-long values are cut and end with the marker of
  the full value (so the cut value still differs per original and stays searchable);
* every change is listed in ``details.normalised`` (``"<field>: <reason>"``, reasons
  ``credential``, ``control``, ``type``, ``length``, ``empty``, ``unknown``), so an auditor sees
  that a record was normalised and where.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from bridge.core.audit_codes import (
    BREAK_GLASS_EVENTS,
    PACS_INGEST_TYPES,
    AuditEventType,
    ObjectKind,
    Outcome,
    codes_for,
)

__all__ = ["PACS_INGEST_TYPES"]  # re-exported: the ingest endpoint and the plugin share it

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
REDACTED = "[redacted]"
MARKER_PREFIX = "redacted-sha256:"
#: the longest stored text of each field (the indexed columns of bridge/store/models.py)
FIELD_LIMITS: dict[str, int] = {
    "user_id": 512, "username": 256, "client_id": 256, "network_address": 128, "correlation_id": 128,
    "patient_id": 128, "study_uid": 64, "object_id": 256, "object_name": 256, "detail_key": 128,
}
#: the longest free text (a description, one string in details)
TEXT_LIMIT = 4096
#: nesting deeper than this in details is cut (a hostile ingest body could nest thousands deep)
MAX_DEPTH = 12
#: how far an ingested event's time may lie ahead of the server's clock (clock skew)...
INGEST_MAX_SKEW_SECONDS = 300
#: ...and behind it: the longest a plugin may reasonably keep events in its spool
INGEST_MAX_AGE_SECONDS = 30 * 86400
#: UUID v5 namespace for the ids of events that came without a usable one (stable per content)
_EVENT_ID_NAMESPACE = uuid.UUID("0d7c5b1e-3f4a-4c1b-9d2e-7a6b5c4d3e2f")
_EVENT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")

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

#: a JWT (three base64url segments).  The generic form only starts where a run of base64url
#: characters starts (the lookbehind): tried at every position, a long run without dots would cost
#: quadratic time, and hostile text reaches this regex
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
                  r"|(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]+")
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


def looks_like_credential(value: str) -> bool:
    """A JWT, or a ``Bearer``/``Basic``/``DPoP`` credential, anywhere in ``value``."""
    return bool(_JWT.search(value) or _AUTH_SCHEME.search(value))


def redact_text(value: str) -> str:
    value = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} [redacted-credential]", value)
    return _JWT.sub("[redacted-jwt]", value)


def redaction_marker(value: str) -> str:
    """The stable stand-in of a value that may not be stored as it is (see the module docstring)."""
    digest = hashlib.sha256(b"pacs-bridge/audit-redaction/v1\0" + value.encode("utf-8", "surrogatepass"))
    return MARKER_PREFIX + digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- normalisation

#: what is escaped: C0/C1 controls and DEL, lone surrogates, U+FFFE/U+FFFF (not XML 1.0
#: characters), line/paragraph separators, and the format characters that change how text *looks*
#: (bidi overrides, zero-width and invisible characters, tags): an auditor reading ``admin\u202e``
#: must see the escape, not a reordered name
_UNSAFE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ufffe\uffff\ud800-\udfff"
    "\U000110bd\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001-\U000e007f]"
)
_UNSAFE_OR_WS = re.compile(_UNSAFE.pattern[:-1] + "\t\n\r]")


def _escape_char(m: re.Match[str]) -> str:
    o = ord(m.group())
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def escape_unsafe(value: str, *, keep_whitespace: bool = False) -> str:
    """``value`` with the characters of :data:`_UNSAFE` (and tab/CR/LF unless
    ``keep_whitespace``) written as ``\\xNN`` / ``\\uNNNN``: the result is valid UTF-8, valid
    XML 1.0 character data and shows the reader what was there."""
    return (_UNSAFE if keep_whitespace else _UNSAFE_OR_WS).sub(_escape_char, value)


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _cut(cleaned: str, original: str, limit: int) -> str:
    # "|" is neither whitespace nor a token character: the cut never forms "Bearer <token>"
    return cleaned[: max(0, limit - len(MARKER_PREFIX) - 17)] + "|" + redaction_marker(original)


def normalise_id(value: Any, limit: int, reasons: list[str] | None = None) -> str | None:
    """An identifier as it is stored: None stays None, anything else becomes safe text of at most
    ``limit`` characters (see the module docstring).  Pure, so a query can normalise its search
    term the same way.  The reasons for any change are appended to ``reasons``."""
    reasons = [] if reasons is None else reasons
    if value is None:
        return None
    if not isinstance(value, str):
        value = _as_text(value)
        reasons.append("type")
    if len(value) > limit:  # only the head is kept: only the head is checked (bounded regex time)
        reasons.append("length")
        head = value[:limit]
        if looks_like_credential(head):
            reasons.append("credential")
            return redaction_marker(value)
        cleaned = escape_unsafe(head)
        if cleaned != head:
            reasons.append("control")
        return _cut(cleaned, value, limit)
    if looks_like_credential(value):
        reasons.append("credential")
        return redaction_marker(value)
    cleaned = escape_unsafe(value)
    if cleaned != value:
        reasons.append("control")
    if len(cleaned) > limit:
        reasons.append("length")
        cleaned = _cut(cleaned, value, limit)
    return cleaned


def normalise_text(value: Any, reasons: list[str] | None = None, limit: int = TEXT_LIMIT) -> str:
    """Free text as it is stored: credentials inside it redacted, unsafe characters escaped
    (tab, CR, LF kept), at most ``limit`` characters."""
    reasons = [] if reasons is None else reasons
    if not isinstance(value, str):
        value = _as_text(value)
        reasons.append("type")
    full = value
    if len(value) > limit:  # cut first: the regexes then see a bounded text
        value = value[:limit]
    redacted = redact_text(value)
    if redacted == value and "%" in value:  # a URI: "Basic%204711" is "Basic 4711" to its server
        decoded = unquote(value, errors="surrogateescape")
        if looks_like_credential(decoded):
            redacted = redact_text(decoded)
    if redacted != value:
        reasons.append("credential")
    cleaned = escape_unsafe(redacted, keep_whitespace=True)
    if cleaned != redacted:
        reasons.append("control")
    if len(full) > limit or len(cleaned) > limit:
        reasons.append("length")
        cleaned = _cut(cleaned, full, limit)
    return cleaned


class _Notes:
    """Collects ``"<field>: <reason>"`` entries while an event is normalised."""

    def __init__(self) -> None:
        self.items: set[str] = set()

    def add(self, what: str, reasons: list[str]) -> None:
        for r in reasons:
            self.items.add(f"{escape_unsafe(what)[:120]}: {r}")

    def id(self, what: str, value: Any, limit: int) -> str | None:
        reasons: list[str] = []
        out = normalise_id(value, limit, reasons)
        self.add(what, reasons)
        return out

    def text(self, what: str, value: Any) -> str:
        reasons: list[str] = []
        out = normalise_text(value, reasons)
        self.add(what, reasons)
        return out


def _redact(value: Any, notes: _Notes, where: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        notes.add(where, ["length"])
        return "[too deep]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = notes.id(f"{where} key", k, FIELD_LIMITS["detail_key"]) or ""
            out[key] = REDACTED if is_secret_key(key) else _redact(v, notes, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v, notes, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    return notes.text(where, value)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dict/list/scalars) with every secret removed and every string made
    safe; see the module docstring."""
    return _redact(value, _Notes(), "details")


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
    #: what normalisation changed (``"<field>: <reason>"``); the event lists it in details
    normalised: tuple[str, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        notes = _Notes()
        for name in ("user_id", "username", "client_id", "network_address"):
            object.__setattr__(self, name, notes.id(f"actor.{name}", getattr(self, name), FIELD_LIMITS[name]))
        if not isinstance(self.is_requestor, bool):
            object.__setattr__(self, "is_requestor", self.is_requestor not in (0, "false", "False", None))
            notes.add("actor.is_requestor", ["type"])
        object.__setattr__(self, "normalised", tuple(sorted(notes.items)))

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
    normalised: tuple[str, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ObjectKind(self.kind))  # a programming error: ValueError
        notes, what = _Notes(), f"object {self.kind.value}"
        limit = {ObjectKind.PATIENT: FIELD_LIMITS["patient_id"],
                 ObjectKind.STUDY: FIELD_LIMITS["study_uid"]}.get(self.kind, FIELD_LIMITS["object_id"])
        oid = notes.id(f"{what}.id", self.id, limit)
        if not oid:
            oid = "(empty)"
            notes.add(f"{what}.id", ["empty"])
        object.__setattr__(self, "id", oid)
        object.__setattr__(self, "name", notes.id(f"{what}.name", self.name, FIELD_LIMITS["object_name"]))
        detail = self.detail
        if not isinstance(detail, Mapping):
            detail = {"value": detail}
            notes.add(f"{what}.detail", ["type"])
        object.__setattr__(self, "detail", _redact(dict(detail), notes, f"{what}.detail"))
        object.__setattr__(self, "normalised", tuple(sorted(notes.items)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "id": self.id}
        if self.name is not None:
            out["name"] = self.name
        if self.detail:
            out["detail"] = dict(self.detail)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParticipantObject:
        """Raises ValueError/KeyError for an unknown kind or a missing id (see
        :meth:`AuditEvent.from_dict`, which keeps the event without such an object)."""
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
        et = AuditEventType(self.type)  # the type is the one thing a caller must get right
        object.__setattr__(self, "type", et)
        notes = _Notes()
        try:
            outcome = Outcome(codes_for(et).default_outcome if self.outcome is None else self.outcome)
        except (ValueError, TypeError):
            outcome = codes_for(et).default_outcome
            notes.add("outcome", ["unknown"])
        object.__setattr__(self, "outcome", outcome)
        if self.actor is not None and not isinstance(self.actor, Actor):
            object.__setattr__(self, "actor", None)
            notes.add("actor", ["type"])
        objects = []
        given = self.objects
        if isinstance(given, str | bytes | Mapping) or not hasattr(given, "__iter__"):
            notes.add("objects", ["type"])
            given = ()
        for i, o in enumerate(given):
            if isinstance(o, ParticipantObject):
                objects.append(o)
            else:
                notes.add(f"objects[{i}]", ["type"])
        object.__setattr__(self, "objects", tuple(objects))
        details = self.details
        if not isinstance(details, Mapping):
            details = {"value": details}
            notes.add("details", ["type"])
        details = _redact(dict(details), notes, "details")
        if self.description is not None:
            object.__setattr__(self, "description", notes.text("description", self.description))
        object.__setattr__(self, "correlation_id",
                           notes.id("correlation_id", self.correlation_id, FIELD_LIMITS["correlation_id"]))
        when = self.time
        if not isinstance(when, dt.datetime):
            when = utcnow()
            notes.add("time", ["type"])
        elif when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # naive: taken as UTC, and said so
            notes.add("time", ["timezone"])
        object.__setattr__(self, "time", when)
        if not isinstance(self.event_id, str) or not _EVENT_ID.fullmatch(self.event_id):
            object.__setattr__(self, "event_id", str(uuid.uuid5(_EVENT_ID_NAMESPACE, repr(self.event_id))))
            notes.add("event_id", ["unknown"])
        found = set(notes.items)
        if self.actor is not None:
            found.update(self.actor.normalised)
        for o in self.objects:
            found.update(o.normalised)
        if found:
            before = details.get("normalised")
            if isinstance(before, list):  # a round trip (ingest, re-read): keep what was noted then
                found.update(x for x in before if isinstance(x, str))
            details["normalised"] = sorted(found)
        object.__setattr__(self, "details", details)

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
        """The event of :meth:`to_dict`'s output, tolerant of everything but the type: a field it
        cannot use is normalised or left out and listed in ``details.normalised`` (the event is
        kept).  ValueError only when ``type`` is not a known event type."""
        try:
            etype = AuditEventType(d["type"])
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"type: not a known audit event type: {str(d.get('type'))[:64]!r}") from None
        notes = _Notes()
        raw_outcome = d.get("outcome")
        try:
            outcome: Outcome | None = Outcome(int(raw_outcome))  # type: ignore[arg-type]
        except (ValueError, TypeError):
            outcome = None
            notes.add("outcome", ["unknown"])
        actor = d.get("actor")
        if actor is not None and not isinstance(actor, Mapping):
            notes.add("actor", ["type"])
            actor = None
        if actor:
            known = {k: actor[k] for k in ("user_id", "username", "client_id", "network_address", "is_requestor")
                     if k in actor}
            if len(known) != len(actor):
                notes.add("actor", ["unknown"])
            actor_obj: Actor | None = Actor(**known)
        else:
            actor_obj = None
        objects = []
        raw_objects = d.get("objects") or ()
        if not isinstance(raw_objects, list | tuple):
            notes.add("objects", ["type"])
            raw_objects = ()
        unrecognised = []
        for i, o in enumerate(raw_objects):
            try:
                objects.append(ParticipantObject.from_dict(o))
            except (KeyError, ValueError, TypeError, AttributeError):
                notes.add(f"objects[{i}]", ["unknown"])
                unrecognised.append(o)
        details = d.get("details") or {}
        if unrecognised and isinstance(details, Mapping):  # kept (made safe), not lost
            details = {**details, "objects_not_recognised": unrecognised}
        claimed = d.get("time")
        try:
            when = parse_time(claimed)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            try:
                when = dt.datetime.fromisoformat(str(claimed).replace("Z", "+00:00"))
            except ValueError:
                when = utcnow()
                if isinstance(details, Mapping):
                    details = {**details, "time_clamped": {"claimed": normalise_text(claimed, limit=64),
                                                           "reason": "unparseable"}}
                notes.add("time", ["unknown"])
        event = cls(
            type=etype,
            outcome=outcome,
            actor=actor_obj,
            objects=tuple(objects),
            correlation_id=d.get("correlation_id"),
            details=details,
            description=d.get("description"),
            time=when,
            event_id=d.get("event_id") if d.get("event_id") is not None else _content_id(d),
        )
        if notes.items:
            noted = set(event.details.get("normalised") or ()) | notes.items
            object.__setattr__(event, "details", {**event.details, "normalised": sorted(noted)})
        return event


def clamp_time(event: AuditEvent, now: dt.datetime | None = None, *,
               max_skew_seconds: int = INGEST_MAX_SKEW_SECONDS,
               max_age_seconds: int = INGEST_MAX_AGE_SECONDS) -> AuditEvent:
    """``event`` with its time inside [now - max_age, now + max_skew]: a time a sender claims is
    not trusted to place a record anywhere in the trail (far in the future, it would sort after
    everything an auditor looks at; far in the past, into a period already reviewed or archived).
    A future time becomes ``now``, an old one the window's start; ``details.time_clamped`` keeps
    the claimed time."""
    import dataclasses

    now = now or utcnow()
    if event.time > now + dt.timedelta(seconds=max_skew_seconds):
        when, reason = now, "future"
    elif event.time < now - dt.timedelta(seconds=max_age_seconds):
        when, reason = now - dt.timedelta(seconds=max_age_seconds), "too old"
    else:
        return event
    clamp = {"claimed": format_time(event.time), "reason": reason,
             "window": [format_time(now - dt.timedelta(seconds=max_age_seconds)),
                        format_time(now + dt.timedelta(seconds=max_skew_seconds))]}
    return dataclasses.replace(event, time=when, details={**event.details, "time_clamped": clamp})


def _content_id(d: Mapping[str, Any]) -> str:
    """An event id derived from the content: a re-sent event without an id is still recorded once."""
    import json

    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, json.dumps(d, sort_keys=True, default=str)))
