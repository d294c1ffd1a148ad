"""What the audit trail says about each user, by SQL aggregation (never a Python loop over events).

A review of 10,000 users over a trail of a million records must finish in seconds: the last
login and the last PACS access of every user come from one ``GROUP BY actor_user`` over the
indexed columns; only small, pre-filtered sets of records are parsed in Python (the role
assignments made by hand in Keycloak's console, and the PACS accesses of users whose every role
is department-scoped, to count accesses outside that scope).

Actors are ``<directory id>@<issuer>`` everywhere in the trail (logins pulled from Keycloak, the
bridge's own events, the Orthanc plugin's), so the part before the first ``@`` is the subject.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select, true

from bridge.core.audit_codes import PACS_INGEST_TYPES, AuditEventType
from bridge.store.models import AuditEventRow

#: records that mean "the person logged in"
LOGIN_TYPES = (AuditEventType.LOGIN_SUCCESS.value,)
#: records that mean "the person used the PACS" (allowed accesses the plugin reported)
ACCESS_TYPES = tuple(sorted(t.value for t in PACS_INGEST_TYPES
                            if t not in (AuditEventType.ACCESS_DENIED, AuditEventType.DICOM_ASSOCIATION_REFUSED)))
#: an access under break-glass is outside the roles by design; it is reviewed in its own queue
EMERGENCY_PURPOSES = frozenset({"BTG"})


def subject_of(actor_user: str | None) -> str | None:
    if not actor_user:
        return None
    return actor_user.partition("@")[0].lower() or None


@dataclass
class Activity:
    last_login: str | None = None
    last_access: str | None = None

    @property
    def last_seen(self) -> str | None:
        seen = [t for t in (self.last_login, self.last_access) if t]
        return max(seen) if seen else None


def activity(engine: Engine) -> dict[str, Activity]:
    """Last successful login and last allowed PACS access per subject (ISO-8601 UTC text)."""
    t = AuditEventRow
    # ``type || ''``: not the (type, time) index, whose every hit costs a row lookup (SQLite chose
    # it: 11 s over a million records), but the covering (actor_user, type, outcome, time) index
    # read in order, grouped without a temporary tree (2.7 s, the same machine under load)
    stmt = (select(t.actor_user,
                   func.max(case((t.type.in_(LOGIN_TYPES), t.time))).label("login"),
                   func.max(case((t.type.in_(ACCESS_TYPES), t.time))).label("access"))
            .where(t.type.concat("").in_(LOGIN_TYPES + ACCESS_TYPES), t.outcome == 0, t.actor_user.is_not(None))
            .group_by(t.actor_user))
    out: dict[str, Activity] = {}
    with engine.connect() as conn:
        for actor, login, access in conn.execute(stmt):
            sid = subject_of(actor)
            if sid is None:
                continue
            a = out.setdefault(sid, Activity())
            if login and (a.last_login is None or login > a.last_login):
                a.last_login = login
            if access and (a.last_access is None or access > a.last_access):
                a.last_access = access
    return out


@dataclass(frozen=True)
class HandAssignment:
    """A role given in Keycloak's console (or admin API) by someone other than the bridge's sync."""

    subject: str
    role: str
    time: str
    admin: str | None
    event_id: str


def hand_assignments(engine: Engine, since: str | None = None) -> list[HandAssignment]:
    """``role.assigned`` records pulled from Keycloak's admin events with ``by_bridge_sync`` false
    (bridge/audit/keycloak_admin_events.py), at or after ``since``."""
    t = AuditEventRow
    stmt = select(t.time, t.actor_username, t.event_id, t.body).where(
        t.type == AuditEventType.ROLE_ASSIGNED.value, t.body.contains('"by_bridge_sync":false'))
    if since:
        stmt = stmt.where(t.time >= since)
    out: list[HandAssignment] = []
    with engine.connect() as conn:
        for time, admin, event_id, body in conn.execute(stmt.order_by(t.seq)):
            try:
                data = json.loads(body)
            except ValueError:
                continue
            details = data.get("details") or {}
            if details.get("source") != "keycloak-admin" or details.get("by_bridge_sync") is not False:
                continue
            objects = [o for o in data.get("objects") or [] if isinstance(o, dict)]
            users = [str(o["id"]).lower() for o in objects if o.get("kind") == "user" and o.get("id")]
            roles = [str(o["id"]) for o in objects if o.get("kind") == "role" and o.get("id")]
            out.extend(HandAssignment(u, r, time, admin, event_id) for u in users for r in roles)
    return out


@dataclass
class ScopeCheck:
    """Allowed PACS accesses of one user to studies outside the departments of their roles."""

    count: int = 0
    departments: set[str] = field(default_factory=set)
    examples: list[dict[str, Any]] = field(default_factory=list)


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def out_of_scope(engine: Engine, allowed: Mapping[str, frozenset[str]], issuers: Iterable[str],
                 since: str | None = None) -> dict[str, ScopeCheck]:
    """For each subject in ``allowed`` (subject -> the departments their roles cover; only users
    whose *every* role is department-scoped), the allowed accesses to a study of another
    department.  The department is what the plugin recorded with the access
    (``details.departments``); records without it cannot be judged and are not counted.

    The database does the filtering: users are grouped by their set of departments, and for each
    group one query takes their access records (indexed ``actor_user``) whose body names
    departments but not exactly one of the allowed ones (the body is canonical JSON,
    bridge/audit/chain.py: ``"departments":["Cardiology"]``).  Only what remains (accesses to
    another department, or to several studies at once) is parsed, so the cost follows the
    alarms, not the trail's size."""
    if not allowed:
        return {}
    t = AuditEventRow
    issuers = list(issuers)
    by_set: dict[frozenset[str], list[str]] = {}
    for sid, depts in allowed.items():
        by_set.setdefault(depts, []).append(sid)
    out: dict[str, ScopeCheck] = {}
    with engine.connect() as conn:
        for depts, sids in by_set.items():
            actors = {f"{sid}@{iss}": sid for sid in sids for iss in issuers}
            inside = [t.body.contains('"departments":' + json.dumps([d], ensure_ascii=False), autoescape=True)
                      for d in sorted(depts)]
            for chunk in _chunks(sorted(actors), 500):
                cond = and_(t.actor_user.in_(chunk), t.type.in_(ACCESS_TYPES), t.outcome == 0,
                            t.body.contains('"departments":'), ~or_(*inside) if inside else true())
                if since:
                    cond = and_(cond, t.time >= since)
                stmt = select(t.actor_user, t.time, t.event_id, t.body).where(cond)
                for actor, time, event_id, body in conn.execute(stmt):
                    _judge(out, actors[actor], depts, time, event_id, body)
    return out


def _judge(out: dict[str, ScopeCheck], sid: str, allowed: frozenset[str], time: str, event_id: str,
           body: str) -> None:
    """Count one access record if it reached a department outside ``allowed`` (not under break-glass)."""
    try:
        details = json.loads(body).get("details") or {}
    except ValueError:
        return
    purposes = details.get("purpose_of_use") or []
    if isinstance(purposes, list) and EMERGENCY_PURPOSES & {str(p) for p in purposes}:
        return
    depts = details.get("departments")
    if not isinstance(depts, list):
        return
    wanted = {d.lower() for d in allowed}
    outside = {str(d) for d in depts if isinstance(d, str) and d.lower() not in wanted}
    if not outside:
        return
    check = out.setdefault(sid, ScopeCheck())
    check.count += 1
    check.departments |= outside
    if len(check.examples) < 5:
        check.examples.append({"time": time, "event_id": event_id, "departments": sorted(outside)})
