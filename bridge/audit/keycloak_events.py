"""Logins that happen inside Keycloak, pulled into the audit trail.

Why pull: the password and OTP forms are Keycloak's, so a wrong password or a wrong OTP code
never reaches the bridge; only Keycloak knows.  Keycloak keeps its *user events* in its own
database for ``eventsExpiration`` (the realm keeps 7 days, keycloak-realm/hospital-realm.json)
and has no syslog/ATNA output (KEYCLOAK-2370), so this job reads them through the admin API
(``GET /admin/realms/{realm}/events``, oldest first, ``dateFrom`` in epoch milliseconds) and
records each as a bridge audit event with the usual DICOM codes:

========================================  =====================================================
Keycloak event                            audit event
========================================  =====================================================
LOGIN                                     login.success
LOGIN_ERROR, password / unknown user      login.failure (outcome 4)
LOGIN_ERROR, second factor (OTP) wrong    login.mfa_failure (outcome 4)
LOGIN_ERROR, user_disabled / locked       login.failure (outcome 8: serious, standards.md §3)
USER_DISABLED_BY_*_LOCKOUT                login.failure (outcome 8, reason: brute-force lockout)
LOGOUT                                    logout
========================================  =====================================================

Keycloak records a wrong OTP code as ``invalid_user_credentials`` like a wrong password; the
difference is the ``selected_credential_id`` detail, the credential the failing form checked.
Its *type* (``otp``, ``webauthn``, ...) is looked up through the admin API, so a failure is only
called an MFA failure when it really was the second factor.

The actor is the user as everywhere in the bridge's trail: ``<directory id>@<bridge issuer>``
(the federation's ``LDAP_ID``: objectGUID / entryUUID), the Keycloak id only for local Keycloak
accounts, so ``audit query --user`` finds a person's Keycloak logins beside their token and PACS
events.  Event details go through the audit redaction guard like every other detail (Keycloak
does not put passwords there, but an attempted username or a future detail might hold one).

Never stalled by one event: a Keycloak event the mapping cannot use (a missing or odd field, a
user lookup that fails) is recorded as ``audit.input_rejected`` with its Keycloak id and the
error, under the audit id the event itself would have had (so it is recorded once), and the
cursor moves past it; values that look like credentials (an ``ipAddress`` of ``Basic 4711``) are
replaced by the event model, never refused (bridge/core/audit_events.py).

Exactly once: the audit event id is derived from the Keycloak event id (UUID v5), events already
in the trail are skipped and the database's unique ``event_id`` refuses a duplicate that a
concurrent run would try; the cursor (time of the newest event taken + the ids taken at that
millisecond, table ``pull_cursors``) only makes the next pull short.  One replica pulls at a time
(database lease).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, select

from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.errors import InputError
from bridge.store.db import session, write_session
from bridge.store.models import AuditEventRow, PullCursor

log = logging.getLogger(__name__)

#: the Keycloak user event types this job maps (the realm must keep them: ``enabledEventTypes``)
PULLED_TYPES = ("LOGIN", "LOGIN_ERROR", "LOGOUT",
                "USER_DISABLED_BY_TEMPORARY_LOCKOUT", "USER_DISABLED_BY_PERMANENT_LOCKOUT")
#: LOGIN_ERROR errors that mean the account cannot log in at all: a serious failure (outcome 8)
ACCOUNT_BLOCKED_ERRORS = frozenset({"user_disabled", "user_temporarily_disabled"})
#: errors that name the second factor outright
MFA_ERRORS = frozenset({"invalid_totp"})
#: errors of a credential check; which factor failed is told by ``selected_credential_id``
CREDENTIAL_ERRORS = frozenset({"invalid_user_credentials", "invalid_totp"})
#: Keycloak credential types that are a second factor
SECOND_FACTOR_TYPES = frozenset({"otp", "webauthn", "webauthn-passwordless", "recovery-authn-codes"})
#: details copied as the actor or dropped: ``code_id`` is Keycloak's session id (a session handle)
_CONSUMED_DETAILS = frozenset({"username", "code_id"})

PAGE_SIZE = 100
LEASE = "audit-keycloak-events"
CLIENT_ID = "pacs-bridge-serve"
#: UUID v5 namespace of audit event ids derived from Keycloak event ids (fixed forever: changing
#: it would record every event still in Keycloak a second time)
EVENT_ID_NAMESPACE = uuid.UUID("5b0b7f0e-6f7c-4b7e-9a55-0c6a3c1d2e41")


class KeycloakEventsError(InputError, RuntimeError):
    """The pull cannot run (configuration, Keycloak unreachable); the message says why."""


@dataclass(frozen=True)
class KcUser:
    """What the mapping needs to know about a Keycloak user."""

    directory_id: str | None
    username: str | None
    #: credential id -> type (``password``, ``otp``, ...)
    credential_types: Mapping[str, str] = field(default_factory=dict)


class EventSource(Protocol):
    """Keycloak's admin API, as far as the pull needs it (a fake in unit tests)."""

    def events(self, date_from_ms: int, first: int, max_results: int) -> list[dict[str, Any]]:
        """Events of :data:`PULLED_TYPES` at or after ``date_from_ms``, oldest first."""

    def user(self, user_id: str) -> KcUser | None:
        """The user with this Keycloak id, None if it no longer exists."""


def audit_event_id(realm: str, kc_event_id: str) -> str:
    """The audit record id of a Keycloak event: the same on every pull, hence recorded once."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"keycloak:{realm}:{kc_event_id}"))


def _event_time(kc_event: Mapping[str, Any]) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(kc_event["time"]) / 1000, dt.UTC)


def classify(kc_event: Mapping[str, Any], kc_user: KcUser | None) -> tuple[AuditEventType, Outcome, str] | None:
    """(audit type, outcome, reason) of a Keycloak event, or None for a type this job ignores."""
    kind, error = kc_event.get("type"), kc_event.get("error") or ""
    if kind == "LOGIN":
        return AuditEventType.LOGIN_SUCCESS, Outcome.SUCCESS, "login"
    if kind == "LOGOUT":
        return AuditEventType.LOGOUT, Outcome.SUCCESS, "logout"
    if kind in ("USER_DISABLED_BY_TEMPORARY_LOCKOUT", "USER_DISABLED_BY_PERMANENT_LOCKOUT"):
        return AuditEventType.LOGIN_FAILURE, Outcome.SERIOUS_FAILURE, kind.lower()
    if kind != "LOGIN_ERROR":
        return None
    if error in ACCOUNT_BLOCKED_ERRORS:
        return AuditEventType.LOGIN_FAILURE, Outcome.SERIOUS_FAILURE, error
    if error in MFA_ERRORS:
        return AuditEventType.MFA_FAILURE, Outcome.MINOR_FAILURE, error
    credential_id = (kc_event.get("details") or {}).get("selected_credential_id")
    if error in CREDENTIAL_ERRORS and credential_id and kc_user is not None \
            and kc_user.credential_types.get(str(credential_id)) in SECOND_FACTOR_TYPES:
        return (AuditEventType.MFA_FAILURE, Outcome.MINOR_FAILURE,
                f"{error}: {kc_user.credential_types[str(credential_id)]}")
    return AuditEventType.LOGIN_FAILURE, Outcome.MINOR_FAILURE, error or "login_error"


def to_audit_event(kc_event: Mapping[str, Any], *, realm: str, issuer: str,
                   kc_user: KcUser | None) -> ev.AuditEvent | None:
    """One Keycloak user event as an audit event (None for types this job does not record).

    ``issuer`` is the bridge's token issuer: the actor is ``<subject>@<issuer>`` exactly as in
    the bridge's own login and token events."""
    kind = classify(kc_event, kc_user)
    if kind is None:
        return None
    audit_type, outcome, reason = kind
    details = dict(kc_event.get("details") or {})
    kc_user_id = kc_event.get("userId")
    subject = (kc_user.directory_id if kc_user else None) or kc_user_id
    username = details.get("username") or (kc_user.username if kc_user else None)
    if kc_event.get("error") == "user_not_found" and not kc_user:
        # what was typed is not a known account: often a password typed into the wrong field.
        # Keep only a short hash, so repeated attempts still correlate.
        typed = str(details.get("username") or "")
        username = f"unknown#{hashlib.sha256(typed.encode()).hexdigest()[:12]}" if typed else None
    actor = ev.Actor(user_id=f"{subject}@{issuer}" if subject else None, username=username,
                     client_id=kc_event.get("clientId") or None, network_address=kc_event.get("ipAddress") or None)
    objects = (ev.user(str(subject), username),) if subject else ()
    extra: dict[str, Any] = {
        "source": "keycloak", "realm": realm, "keycloak_event_id": kc_event["id"],
        "keycloak_event_type": kc_event.get("type"), "reason": reason,
        "keycloak_details": {k: v for k, v in details.items() if k not in _CONSUMED_DETAILS},
    }
    if kc_event.get("error"):
        extra["error"] = kc_event["error"]
    if kc_user_id:
        extra["keycloak_user_id"] = kc_user_id
        if kc_user is None or not kc_user.directory_id:
            extra["subject_source"] = "keycloak user id (no directory id)"
    return ev.AuditEvent(type=audit_type, outcome=outcome, actor=actor, objects=objects, details=extra,
                         description=f"Keycloak {kc_event.get('type')} in realm {realm}",
                         time=_event_time(kc_event), event_id=audit_event_id(realm, str(kc_event["id"])))


# ---------------------------------------------------------------------------- cursor


@dataclass
class Cursor:
    time_ms: int = 0
    ids: list[str] = field(default_factory=list)

    def advance(self, kc_events: Iterable[Any]) -> None:
        for e in kc_events:
            t = _time_ms(e)
            if t is None:  # cannot be placed in time: recorded as an error, not a cursor position
                continue
            kid = kc_id(e)
            if t > self.time_ms:
                self.time_ms, self.ids = t, [kid]
            elif t == self.time_ms and kid not in self.ids:
                self.ids.append(kid)


def _time_ms(e: Any) -> int | None:
    t = e.get("time") if isinstance(e, Mapping) else None
    return t if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**53 else None


def oldest_first(events: list[Any]) -> list[Any]:
    """Keycloak's page sorted by time (asc already; a guard costs nothing).  An item without a
    usable time sorts first instead of failing the sort: it is recorded as an error, not a stall."""
    return sorted(events, key=lambda e: _time_ms(e) or 0)


def kc_id(e: Any) -> str:
    """The Keycloak id of an event; for one without a usable id, a hash of its content (stable,
    so the error it causes is recorded once)."""
    raw = e.get("id") if isinstance(e, Mapping) else None
    if isinstance(raw, str) and 0 < len(raw) <= 64 and raw.isprintable():
        return raw
    content = json.dumps(e, sort_keys=True, default=str)
    return "content-sha256:" + hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def cursor_name(realm: str) -> str:
    return f"keycloak-events:{realm}"


def load_cursor(engine: Engine, name: str) -> Cursor:
    with session(engine) as s:
        row = s.get(PullCursor, name)
        return Cursor(row.time_ms, list(row.ids or [])) if row else Cursor()


def save_cursor(engine: Engine, name: str, cursor: Cursor) -> None:
    with write_session(engine) as s:
        row = s.get(PullCursor, name)
        if row is None:
            s.add(PullCursor(name=name, time_ms=cursor.time_ms, ids=list(cursor.ids)))
        else:
            row.time_ms, row.ids = cursor.time_ms, list(cursor.ids)


def _already_recorded(engine: Engine, event_ids: Sequence[str]) -> set[str]:
    if not event_ids:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEventRow.event_id).where(AuditEventRow.event_id.in_(list(event_ids))))
        return {r[0] for r in rows}


# ---------------------------------------------------------------------------- the pull


def _map_one(e: Any, source: EventSource, users: dict[str, KcUser | None], *, realm: str,
             issuer: str) -> ev.AuditEvent | None:
    if not isinstance(e, Mapping):
        raise TypeError(f"not a JSON object but {type(e).__name__}")
    if _time_ms(e) is None:
        raise ValueError("time: not epoch milliseconds")
    if not isinstance(e.get("details") or {}, Mapping):
        raise ValueError("details: not a JSON object")
    uid = e.get("userId")
    if uid is not None and not isinstance(uid, str):
        raise ValueError("userId: not a string")
    if uid and uid not in users:
        try:
            users[uid] = source.user(uid)
        except Exception as exc:  # the event is still recorded, by its Keycloak user id
            log.warning("keycloak events: looking up user %s failed (%s)", ev.escape_unsafe(uid)[:64],
                        type(exc).__name__)
            users[uid] = None
    return to_audit_event({**e, "id": kc_id(e)}, realm=realm, issuer=issuer,
                          kc_user=users.get(uid) if uid else None)


def rejected_event(e: Any, exc: Exception, *, realm: str, source: str = "keycloak",
                   event_id: Callable[[str, str], str] | None = None) -> ev.AuditEvent:
    """What is recorded for a Keycloak event the mapping could not use: its Keycloak id, type and
    the error, and the event itself (through the model's redaction), under the audit id the event
    would have had (``event_id(realm, keycloak id)``, :func:`audit_event_id` by default)."""
    kid = kc_id(e)
    t = _time_ms(e)
    kind = (e.get("type") or e.get("operationType")) if isinstance(e, Mapping) else None
    return ev.AuditEvent(
        type=AuditEventType.AUDIT_INPUT_REJECTED, outcome=Outcome.MINOR_FAILURE,
        details={"source": source, "realm": realm, "keycloak_event_id": kid,
                 "keycloak_event_type": kind,
                 "error": f"{type(exc).__name__}: {exc}", "keycloak_event": e},
        description=f"Keycloak event in realm {realm} could not be recorded as such",
        time=dt.datetime.fromtimestamp(t / 1000, dt.UTC) if t is not None else ev.utcnow(),
        event_id=(event_id or audit_event_id)(realm, kid),
    )



@dataclass
class PullReport:
    fetched: int = 0
    recorded: int = 0
    duplicates: int = 0
    ignored: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    cursor_time_ms: int = 0
    #: Keycloak events that could not be mapped; each recorded as audit.input_rejected
    errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pull_pages(store: AuditStore, *, cursor: str, what: str,
               fetch: Callable[[int, int, int], list[Any]],
               map_event: Callable[[Any], ev.AuditEvent | None],
               reject: Callable[[Any, Exception], ev.AuditEvent],
               page_size: int = PAGE_SIZE) -> PullReport:
    """Record every event of a Keycloak event list newer than the cursor ``cursor``: one
    transaction and cursor save per page.  ``fetch(date_from_ms, first, max)`` reads a page,
    oldest first; ``map_event`` makes the audit event (None: a type that was not asked for, an
    error); ``reject`` makes the audit.input_rejected event of one that cannot be mapped.  Shared
    by the login events and the admin events (bridge/audit/keycloak_admin_events.py)."""
    state = load_cursor(store.engine, cursor)
    report = PullReport(cursor_time_ms=state.time_ms)
    date_from, seen_at_start = state.time_ms, set(state.ids)  # fixed while paging with ``first``
    first = 0
    while True:
        page = fetch(date_from, first, page_size)
        report.fetched += len(page)
        fresh = [e for e in page if kc_id(e) not in seen_at_start]
        mapped: list[ev.AuditEvent] = []
        for e in fresh:
            try:
                event = map_event(e)
            except Exception as exc:  # one bad event must not stall the pull
                log.warning("keycloak %s: event %s could not be recorded as such (%s); recorded as "
                            "audit.input_rejected", what, ev.escape_unsafe(kc_id(e))[:80], type(exc).__name__)
                event = reject(e, exc)
                report.errors += 1
            if event is None:  # a type the pull did not ask for: unexpected, so recorded, not ignored
                report.ignored += 1
                report.errors += 1
                kind = e.get("type") if isinstance(e, Mapping) else None
                event = reject(e, ValueError(f"unexpected Keycloak event type {str(kind)[:64]!r}"))
            mapped.append(event)
        done = _already_recorded(store.engine, [m.event_id for m in mapped])
        new = [m for m in mapped if m.event_id not in done]
        report.duplicates += len(mapped) - len(new)
        store.append_many(new)
        for m in new:
            report.by_type[m.type.value] = report.by_type.get(m.type.value, 0) + 1
        report.recorded += len(new)
        state.advance(page)
        save_cursor(store.engine, cursor, state)
        if len(page) < page_size:
            break
        first += len(page)
    report.cursor_time_ms = state.time_ms
    return report


def pull(store: AuditStore, source: EventSource, *, realm: str, issuer: str,
         page_size: int = PAGE_SIZE) -> PullReport:
    """Record every Keycloak user event newer than the cursor (:func:`pull_pages`)."""
    users: dict[str, KcUser | None] = {}
    return pull_pages(
        store, cursor=cursor_name(realm), what="events", page_size=page_size, fetch=source.events,
        map_event=lambda e: _map_one(e, source, users, realm=realm, issuer=issuer),
        reject=lambda e, exc: rejected_event(e, exc, realm=realm))


# ---------------------------------------------------------------------------- Keycloak


def events_admin(settings: Any, what: str) -> Any:
    """The admin client an event pull uses (python-keycloak, built by :mod:`bridge.kcadmin`), with the
    pull's own errors: ``what`` names the events (login events, admin events) in the message."""
    from keycloak.exceptions import KeycloakError

    from bridge.kcadmin import admin_from_settings

    kc = settings.keycloak
    if kc.admin_password is None:
        raise KeycloakEventsError(f"keycloak.admin_password is not set: pulling Keycloak's {what} "
                                  "needs the admin API (view-events in the realm)")
    try:
        return admin_from_settings(kc, timeout=60)
    except (KeycloakError, OSError) as exc:
        raise KeycloakEventsError(f"keycloak {kc.url}: cannot log in to the admin API as "
                                  f"{kc.admin_username!r}: {exc}") from exc


class AdminApiSource:
    """:class:`EventSource` over python-keycloak.  A fresh admin login per pull: master-realm
    admin tokens live 60 s and a long pause between pulls would otherwise start with a 401."""

    def __init__(self, admin: Any):
        self.admin = admin

    @classmethod
    def from_settings(cls, settings: Any) -> AdminApiSource:
        return cls(events_admin(settings, "login events"))

    def events(self, date_from_ms: int, first: int, max_results: int) -> list[dict[str, Any]]:
        found = self.admin.get_events({"dateFrom": str(date_from_ms), "direction": "asc", "first": first,
                                       "max": max_results, "type": list(PULLED_TYPES)})
        return oldest_first(found)

    def user(self, user_id: str) -> KcUser | None:
        from keycloak.exceptions import KeycloakGetError

        from bridge.directory.model import LDAP_ID

        try:
            rep = self.admin.get_user(user_id)
            creds = self.admin.get_credentials(user_id)
        except KeycloakGetError as exc:
            if exc.response_code == 404:
                return None
            raise
        ldap_id = ((rep.get("attributes") or {}).get(LDAP_ID) or [None])[0]
        return KcUser(directory_id=ldap_id, username=rep.get("username"),
                      credential_types={c["id"]: c.get("type", "") for c in creds if c.get("id")})


def bridge_issuer(settings: Any) -> str:
    """The ``iss`` the bridge's own events use in ``sub@iss`` (bridge/web/tokens.py)."""
    return str(settings.tokens.issuer or settings.bridge.public_url)


def pull_under_lease(store: AuditStore, lease_name: str, what: str,
                     run: Callable[[], PullReport]) -> PullReport | None:
    """Run one pull under its database lease (one replica at a time) and log what it recorded;
    None when another replica holds the lease.  Shared by the login and the admin event pulls."""
    import os
    import socket

    from bridge.store import lease

    owner = f"{socket.gethostname()}:{os.getpid()}"
    if not lease.acquire(store.engine, lease_name, owner, ttl_seconds=600):
        log.info("%s: another replica holds the lease; skipped", what)
        return None
    try:
        report = run()
    finally:
        lease.release(store.engine, lease_name, owner)
    if report.recorded:
        log.info("%s: %d recorded (%s), %d already in the trail, %d unusable", what, report.recorded,
                 ", ".join(f"{k} {v}" for k, v in sorted(report.by_type.items())), report.duplicates,
                 report.errors)
    return report


def pull_from_settings(
    settings: Any, store: AuditStore,
    source_factory: Callable[[Any], EventSource] = AdminApiSource.from_settings,
) -> PullReport | None:
    """One pull as configured, under the database lease; None when another replica is pulling."""
    return pull_under_lease(store, LEASE, "keycloak events", lambda: pull(
        store, source_factory(settings), realm=settings.keycloak.realm, issuer=bridge_issuer(settings)))
