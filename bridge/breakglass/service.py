"""Break-glass (emergency access): the request, the grant it yields, and the post-hoc review queue.

A holder of a policy role with the ``emergency`` capability asks for the policy's emergency
permissions on ONE study (StudyInstanceUID) or ONE patient (PatientID), with a reason and the
purpose of use ``BTG``, right after a fresh multi-factor login.  The answer is a stored row
(``break_glass_grants``) that the token service reads at every issue (:meth:`BreakGlass.grants` is
a :data:`bridge.tokens.service.GrantSource`) and turns into a core grant of kind ``break-glass``
scoped to that study or patient with its own ``exp``: the same grant model as a department-scoped
role, not a second mechanism; the PACS plugin needs nothing new.

Why the row is re-read at every issue and the requester's roles with it: a grant must end when
its time is up (never renewed: a new request, a new alert, a new review item) and at once when the
requester loses the role that allowed it.

At the moment of the grant: an audit record (DICOM Emergency Override Started, PurposeOfUse BTG)
is written synchronously -- no record, no grant -- and an alert goes out (syslog at alert severity,
a webhook; :mod:`bridge.breakglass.alerts`).  The row stays ``open`` in the review queue until
another person holding ``audit-logs`` closes it as justified or not justified, with a comment;
the requester can never close their own.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from bridge.core import audit_events as ev
from bridge.core import grants as grants_mod
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.core.permissions import Permission
from bridge.policy.model import Policy
from bridge.store.db import connection, write_transaction
from bridge.store.models import BreakGlassGrant
from bridge.tokens.claims import Subject
from bridge.tokens.store import AssignmentSource

#: the IHE IUA / HL7 v3 ActReason purpose of use of an emergency access
PURPOSE = "BTG"
TargetKind = Literal["study", "patient"]
TARGET_KINDS: tuple[TargetKind, ...] = ("study", "patient")
#: review verdicts, and the state of an item nobody closed yet
VERDICTS = ("justified", "not-justified")
OPEN = "open"
#: who may close a review item (besides never being the requester)
REVIEW_PERMISSION = Permission.AUDIT_LOGS.value
#: a DICOM UID: digits and dots, at most 64 characters, no leading zero in a component (PS3.5 9.1)
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: a PatientID (LO: 64 characters, no backslash, no control character)
_PATIENT_ID = re.compile(r"[^\\\x00-\x1f\x7f]{1,64}")
REASON_MIN, REASON_MAX = 10, 1000
COMMENT_MAX = 2000
#: how much earlier than the request the fresh login may be dated (whole seconds at Keycloak)
CLOCK_LEEWAY_SECONDS = 1


class BreakGlassRefused(Exception):
    """A request or review the bridge refuses.  ``message`` is for the user (never a secret),
    ``status`` the HTTP status (400 bad input, 401 no fresh second factor, 403 not allowed,
    404 unknown item, 409 already closed)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Target:
    """The one study or patient an emergency grant covers."""

    kind: TargetKind
    value: str

    @classmethod
    def parse(cls, kind: Any, value: Any) -> Target:
        """A checked target; BreakGlassRefused(400) naming the field otherwise."""
        if kind not in TARGET_KINDS:
            raise BreakGlassRefused(f"target_kind: must be one of {', '.join(TARGET_KINDS)}", 400)
        if not isinstance(value, str) or not value.strip():
            raise BreakGlassRefused("target: the StudyInstanceUID or PatientID is required", 400)
        text = value.strip()
        if kind == "study" and (len(text) > 64 or not _UID.fullmatch(text)):
            raise BreakGlassRefused("target: not a StudyInstanceUID (digits and dots, at most 64)", 400)
        if kind == "patient" and not _PATIENT_ID.fullmatch(text):
            raise BreakGlassRefused("target: not a PatientID (at most 64 characters, no control characters)", 400)
        return cls(kind, text)

    def scope(self) -> dict[str, list[str]]:
        return {"studies" if self.kind == "study" else "patients": [self.value]}


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or len(reason.strip()) < REASON_MIN:
        raise BreakGlassRefused(f"reason: say why (at least {REASON_MIN} characters)", 400)
    if len(reason) > REASON_MAX:
        raise BreakGlassRefused(f"reason: at most {REASON_MAX} characters", 400)
    return reason.strip()


@dataclass(frozen=True)
class Item:
    """One stored request (grant and review item)."""

    id: str
    subject_id: str
    username: str | None
    target: Target
    reason: str
    permissions: tuple[str, ...]
    roles: tuple[str, ...]
    client_id: str
    network_address: str | None
    auth_time: dt.datetime
    created_at: dt.datetime
    expires_at: dt.datetime
    review_state: str
    reviewer_id: str | None = None
    reviewer_username: str | None = None
    reviewed_at: dt.datetime | None = None
    review_comment: str | None = None

    def grant(self) -> grants_mod.Grant:
        """The core grant this item puts into the requester's tokens."""
        return grants_mod.Grant(
            frozenset(self.permissions), kind="break-glass", role=None, exp=int(self.expires_at.timestamp()),
            studies=frozenset({self.target.value}) if self.target.kind == "study" else None,
            patients=frozenset({self.target.value}) if self.target.kind == "patient" else None)

    def to_json(self) -> dict[str, Any]:
        """The API's (and the webhook's) view: no token, no secret."""
        return {
            "id": self.id, "subject": self.subject_id, "username": self.username,
            "target": {"kind": self.target.kind, "value": self.target.value}, "reason": self.reason,
            "purpose_of_use": PURPOSE, "permissions": list(self.permissions), "roles": list(self.roles),
            "client_id": self.client_id, "created_at": _iso(self.created_at), "expires_at": _iso(self.expires_at),
            "review": {"state": self.review_state, "reviewer": self.reviewer_username or self.reviewer_id,
                       "reviewed_at": _iso(self.reviewed_at) if self.reviewed_at else None,
                       "comment": self.review_comment},
        }


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _item(row: Any) -> Item:
    return Item(id=row.id, subject_id=row.subject_id, username=row.username,
                target=Target(row.target_kind, row.target), reason=row.reason,
                permissions=tuple(row.permissions or ()), roles=tuple(row.roles or ()), client_id=row.client_id,
                network_address=row.network_address, auth_time=row.auth_time, created_at=row.created_at,
                expires_at=row.expires_at, review_state=row.review_state, reviewer_id=row.reviewer_id,
                reviewer_username=row.reviewer_username, reviewed_at=row.reviewed_at,
                review_comment=row.review_comment)


#: the client an event names: the request's own for the start, the bridge's jobs and pages otherwise
_CLIENTS = {AuditEventType.BREAK_GLASS_STOP: "pacs-bridge-serve",
            AuditEventType.BREAK_GLASS_REVIEWED: "break-glass-review"}
#: an audit record written synchronously (the grant exists only if its record does)
AppendEvent = Callable[[ev.AuditEvent], Any]
#: the alert of a new grant: (audit event, the item) -> None; must not raise (spools on failure)
Alert = Callable[[ev.AuditEvent, Item], None]


@dataclass
class BreakGlass:
    """Requests, grants and the review queue over the bridge's database."""

    engine: Engine
    policy: Policy | None
    assignments: AssignmentSource
    append: AppendEvent
    issuer: str
    mfa_rule: mfa.MfaRule
    fresh_auth_seconds: int = 300
    alert: Alert | None = None
    clock: Callable[[], float] = time.time

    # ---- who may

    def emergency_roles(self, subject_id: str) -> tuple[str, ...]:
        """The requester's roles with the ``emergency`` capability, read from the assignments now."""
        if self.policy is None or self.policy.emergency is None:
            return ()
        capable = self.policy.emergency_roles()
        return tuple(sorted({a.role for a in self.assignments.assignments(subject_id, None) if a.role in capable}))

    def may_request(self, subject_id: str) -> bool:
        return bool(self.emergency_roles(subject_id))

    # ---- the request

    def request(self, subject: Subject, claims: Mapping[str, Any], target: Target, reason: str, *,
                purpose_of_use: Any, client_id: str, network_address: str | None = None,
                asked_at: float | None = None) -> Item:
        """Give ``subject`` an emergency grant on ``target``, or raise :class:`BreakGlassRefused`
        (audited either way).  ``claims`` are the validated claims of the login the request rides
        on (``auth_time``, ``acr``, ``amr``); ``asked_at``: when the user asked, before that login
        (the gateway's flow), so a login from before the question never counts."""
        now = self.clock()
        try:
            reason = check_reason(reason)
            if purpose_of_use != PURPOSE:
                raise BreakGlassRefused(f"purpose_of_use: must be {PURPOSE} (break the glass)", 400)
            # the second factor first: without it, not even whether the roles would allow it is told
            why = self.not_fresh(claims, now, asked_at)
            if why is not None:
                raise BreakGlassRefused(f"a fresh multi-factor login is required: {why}", 401)
            if self.policy is None or self.policy.emergency is None:
                raise BreakGlassRefused("break-glass is not configured (the policy has no emergency: section)")
            roles = self.emergency_roles(subject.id)
            if not roles:
                raise BreakGlassRefused("none of your roles allows emergency access")
        except BreakGlassRefused as exc:
            self._denied(subject, target, exc.message, client_id, network_address)
            raise
        emergency = self.policy.emergency
        auth_time = dt.datetime.fromtimestamp(float(claims["auth_time"]), dt.UTC)
        created = dt.datetime.fromtimestamp(now, dt.UTC)
        item = Item(id=str(uuid.uuid4()), subject_id=subject.id, username=subject.username, target=target,
                    reason=reason, permissions=tuple(sorted(p.value for p in emergency.effective_permissions)),
                    roles=roles, client_id=client_id, network_address=network_address, auth_time=auth_time,
                    created_at=created, expires_at=created + dt.timedelta(minutes=emergency.lifetime_minutes),
                    review_state=OPEN)
        event = self._event(AuditEventType.BREAK_GLASS_START, subject, item, network_address, {
            "grant_id": item.id, "reason": reason, "purpose_of_use": PURPOSE, "expires_at": _iso(item.expires_at),
            "permissions": list(item.permissions), "roles": list(roles), "target_kind": target.kind,
            "auth_time": _iso(auth_time)})
        self.append(event)  # no record, no grant: an exception here stops the request
        with write_transaction(self.engine) as conn:
            conn.execute(BreakGlassGrant.__table__.insert().values(
                id=item.id, subject_id=item.subject_id, username=item.username, target_kind=target.kind,
                target=target.value, reason=reason, purpose_of_use=PURPOSE, permissions=list(item.permissions),
                roles=list(roles), client_id=client_id, network_address=network_address, auth_time=auth_time,
                created_at=created, expires_at=item.expires_at, review_state=OPEN, stop_recorded=False))
        if self.alert is not None:
            self.alert(event, item)
        return item

    def not_fresh(self, claims: Mapping[str, Any], now: float, asked_at: float | None) -> str | None:
        """Why the login of ``claims`` is not a fresh multi-factor one, or None."""
        verdict = mfa.check(claims, self.mfa_rule, now)
        if not verdict.ok:
            return verdict.reason
        auth_time = float(claims["auth_time"])
        if now - auth_time > self.fresh_auth_seconds:
            return f"the login is {int(now - auth_time)} s old (at most {self.fresh_auth_seconds} s)"
        if asked_at is not None and auth_time < int(asked_at) - CLOCK_LEEWAY_SECONDS:
            return "the login predates the request (log in again when asked)"
        return None

    def _denied(self, subject: Subject, target: Target | None, reason: str, client_id: str,
                network_address: str | None) -> None:
        objects = [ev.user(subject.id, subject.username)]
        if target is not None:
            objects.append(ev.study(target.value) if target.kind == "study" else ev.patient(target.value))
        self.append(ev.AuditEvent(
            type=AuditEventType.ACCESS_DENIED, outcome=Outcome.MINOR_FAILURE,
            actor=ev.Actor(user_id=f"{subject.id}@{self.issuer}", username=subject.username, client_id=client_id,
                           network_address=network_address),
            objects=tuple(objects), details={"reason": f"break-glass refused: {reason}", "purpose_of_use": PURPOSE}))

    def _event(self, kind: AuditEventType, actor: Subject, item: Item, network_address: str | None,
               details: Mapping[str, Any], outcome: Outcome | None = None) -> ev.AuditEvent:
        target = ev.study(item.target.value) if item.target.kind == "study" else ev.patient(item.target.value)
        return ev.AuditEvent(
            type=kind, outcome=outcome,
            actor=ev.Actor(user_id=f"{actor.id}@{self.issuer}", username=actor.username,
                           client_id=_CLIENTS.get(kind, item.client_id), network_address=network_address),
            objects=(ev.user(item.subject_id, item.username), target), details=dict(details))

    # ---- the grants (a GrantSource of the token service)

    def grants(self, subject: Subject) -> Iterable[grants_mod.Grant]:
        """The subject's live emergency grants: not expired, and only while the subject still holds
        a role with the ``emergency`` capability (read now, like the assignments)."""
        if self.policy is None or self.policy.emergency is None:
            return ()
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        with connection(self.engine) as conn:
            rows = conn.execute(select(BreakGlassGrant).where(
                BreakGlassGrant.subject_id == subject.id, BreakGlassGrant.expires_at > now)).all()
        if not rows or not self.may_request(subject.id):
            return ()
        allowed = {p.value for p in self.policy.emergency.effective_permissions}
        out = []
        for row in rows:
            grant = _item(row).grant()
            narrowed = grant.narrowed(allowed)  # a policy narrowed since the request applies at once
            if narrowed.permissions:
                out.append(narrowed)
        return tuple(out)

    def record_ended(self, limit: int = 500) -> int:
        """Write ``break_glass.stop`` (Emergency Override Stopped) for each grant whose time is up,
        once: each row is claimed by an update, so two ``serve`` replicas never record it twice.
        The number recorded."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        with connection(self.engine) as conn:
            rows = conn.execute(select(BreakGlassGrant).where(
                BreakGlassGrant.stop_recorded.is_(False), BreakGlassGrant.expires_at <= now).limit(limit)).all()
        done = 0
        for row in rows:
            with write_transaction(self.engine) as conn:
                claimed = conn.execute(update(BreakGlassGrant).where(
                    BreakGlassGrant.id == row.id, BreakGlassGrant.stop_recorded.is_(False)).values(
                    stop_recorded=True)).rowcount
            if claimed != 1:
                continue
            item = _item(row)
            self.append(self._event(AuditEventType.BREAK_GLASS_STOP, Subject(item.subject_id, item.username), item,
                                    None, {"grant_id": item.id, "reason": "expired", "purpose_of_use": PURPOSE,
                                           "expires_at": _iso(item.expires_at)}))
            done += 1
        return done

    # ---- the review queue

    def items(self, state: str | None = OPEN, limit: int = 200, subject_id: str | None = None) -> list[Item]:
        """Review items, newest first: the open ones by default, ``state=None`` for all."""
        stmt = select(BreakGlassGrant).order_by(BreakGlassGrant.created_at.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(BreakGlassGrant.review_state == state)
        if subject_id is not None:
            stmt = stmt.where(BreakGlassGrant.subject_id == subject_id)
        with connection(self.engine) as conn:
            return [_item(r) for r in conn.execute(stmt).all()]

    def item(self, item_id: str) -> Item | None:
        with connection(self.engine) as conn:
            row = conn.execute(select(BreakGlassGrant).where(BreakGlassGrant.id == item_id)).first()
        return _item(row) if row is not None else None

    def open_count(self) -> int:
        with connection(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(BreakGlassGrant)
                                    .where(BreakGlassGrant.review_state == OPEN)).scalar_one())

    def close(self, item_id: str, reviewer: Subject, reviewer_permissions: Iterable[str], verdict: Any,
              comment: Any, *, network_address: str | None = None) -> Item:
        """Close an open item with a verdict and a comment.  Refused (and audited): a reviewer
        without ``audit-logs``, the requester themself, an unknown or already closed item."""
        found = self.item(item_id) if isinstance(item_id, str) else None
        try:
            if REVIEW_PERMISSION not in set(reviewer_permissions):
                raise BreakGlassRefused(f"closing a break-glass review needs the {REVIEW_PERMISSION} permission")
            if found is None:
                raise BreakGlassRefused("no such break-glass request", 404)
            if reviewer.id == found.subject_id or (
                    reviewer.username and found.username
                    and reviewer.username.casefold() == found.username.casefold()):
                raise BreakGlassRefused("the requester cannot review their own emergency access; another person must")
            if verdict not in VERDICTS:
                raise BreakGlassRefused(f"verdict: must be one of {', '.join(VERDICTS)}", 400)
            if not isinstance(comment, str) or not comment.strip():
                raise BreakGlassRefused("comment: say why (required)", 400)
            if len(comment) > COMMENT_MAX:
                raise BreakGlassRefused(f"comment: at most {COMMENT_MAX} characters", 400)
            if found.review_state != OPEN:
                raise BreakGlassRefused("this break-glass request was already reviewed", 409)
        except BreakGlassRefused as exc:
            self.append(ev.AuditEvent(
                type=AuditEventType.ACCESS_DENIED, outcome=Outcome.MINOR_FAILURE,
                actor=ev.Actor(user_id=f"{reviewer.id}@{self.issuer}", username=reviewer.username,
                               client_id="break-glass-review", network_address=network_address),
                objects=(ev.user(reviewer.id, reviewer.username),),
                details={"reason": f"break-glass review refused: {exc.message}", "grant_id": str(item_id)[:64]}))
            raise
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        with write_transaction(self.engine) as conn:
            done = conn.execute(update(BreakGlassGrant).where(
                BreakGlassGrant.id == found.id, BreakGlassGrant.review_state == OPEN).values(
                review_state=verdict, reviewer_id=reviewer.id, reviewer_username=reviewer.username,
                reviewed_at=now, review_comment=comment.strip())).rowcount
        if done != 1:  # another reviewer was quicker
            raise BreakGlassRefused("this break-glass request was already reviewed", 409)
        self.append(self._event(
            AuditEventType.BREAK_GLASS_REVIEWED, reviewer, found, network_address,
            {"grant_id": found.id, "verdict": verdict, "comment": comment.strip(), "requester": found.subject_id},
            outcome=Outcome.SUCCESS if verdict == "justified" else Outcome.MINOR_FAILURE))
        closed = self.item(found.id)
        assert closed is not None
        return closed


def from_settings(settings: Any, engine: Engine, append: AppendEvent, alert: Alert | None = None) -> BreakGlass:
    """The deployment's break-glass service: the policy of ``sync.policy_file`` (none: break-glass
    is off), the assignment store, the MFA rule and ``break_glass.*``."""
    from bridge.policy.loader import load_policy
    from bridge.tokens.store import SqlAssignmentSource

    policy_file = settings.sync.policy_file
    return BreakGlass(
        engine=engine, policy=load_policy(policy_file) if policy_file else None,
        assignments=SqlAssignmentSource(engine), append=append,
        issuer=settings.tokens.issuer or settings.bridge.public_url, mfa_rule=mfa.MfaRule.from_section(settings.mfa),
        fresh_auth_seconds=settings.break_glass.fresh_auth_seconds, alert=alert)
