"""Compute a review: per user, the roles held and why, activity, and the flags (pure given inputs).

Inputs are gathered elsewhere (the directory snapshot, the policy, the bridge's assignment rows,
the trail's facts from :mod:`bridge.review.facts`, Keycloak's accounts and role members from
:mod:`bridge.review.keycloak`), so the rules below are unit-tested without any server.

Flags (docs/governance.md):

``dormant``        holds a role, and neither logged in nor used the PACS for ``dormant_days``
``orphan``         an account in Keycloak, in a SCIM-provisioned PACS, or an assignment in the
                   bridge's store whose person is not in the directory (or a Keycloak account that
                   is not federated from it)
``disabled``       disabled in the directory, yet still present in Keycloak or holding an assignment
``sod``            the policy's separation-of-duty conflicts (``warn``: roles held; ``deny``: withheld)
``privileged``     holds a role with administration, deletion, settings or audit-log rights
``hand-assigned``  a PACS role given in Keycloak's console outside the policy (a Keycloak role member
                   the policy does not entitle, or a console change in the trail), or a manual row
``out-of-scope``   allowed PACS accesses to studies outside the departments of the user's scoped
                   roles (should be zero: any count is an alarm)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.core.permissions import Permission
from bridge.directory.model import DirectorySnapshot, DirectoryUser
from bridge.policy.evaluate import evaluate
from bridge.policy.loader import PRIVACY_OFFICER
from bridge.policy.model import Policy
from bridge.review.facts import Activity, HandAssignment, ScopeCheck

#: a role holding any of these is privileged (reviewed with extra care, counted on the page)
PRIVILEGED = frozenset({Permission.ADMIN, Permission.DELETE, Permission.SETTINGS, Permission.AUDIT_LOGS})
FLAGS = ("dormant", "orphan", "disabled", "sod", "privileged", "hand-assigned", "out-of-scope")


@dataclass(frozen=True)
class StoredAssignment:
    """A row of ``role_assignments`` (the bridge's store target)."""

    subject_id: str
    username: str
    role: str
    source_group_dn: str
    rule_id: str | None
    managed: bool


@dataclass(frozen=True)
class KeycloakAccount:
    keycloak_id: str
    username: str
    directory_id: str | None  # LDAP_ID; None: a local Keycloak account
    enabled: bool


@dataclass
class KeycloakFacts:
    accounts: list[KeycloakAccount] = field(default_factory=list)
    #: role -> subjects holding it in Keycloak (directory id, else ``keycloak:<id>``)
    role_members: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Item:
    subject_id: str
    username: str
    department: str
    role: str
    source: str  # policy | manual | keycloak-console | excepted
    source_group_dn: str = ""
    rule_id: str | None = None
    queue: str = PRIVACY_OFFICER


@dataclass
class UserReview:
    subject_id: str
    username: str
    department: str
    last_login: str | None = None
    last_access: str | None = None
    flags: set[str] = field(default_factory=set)
    evidence: dict[str, Any] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)


@dataclass
class Review:
    users: dict[str, UserReview]
    #: queue id -> (subject id, username) of its reviewers (the privacy officer's queue included)
    reviewers: dict[str, list[tuple[str, str]]]
    warnings: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[Item]:
        return [i for u in self.users.values() for i in u.items]

    def summary(self) -> dict[str, Any]:
        per_dept: dict[str, dict[str, int]] = {}
        for i in self.items:
            per_dept.setdefault(i.department or "(none)", {}).setdefault(i.role, 0)
            per_dept[i.department or "(none)"][i.role] += 1
        flags = {f: sum(f in u.flags for u in self.users.values()) for f in FLAGS}
        return {"users": len(self.users), "items": len(self.items), "flags": flags,
                "roles_per_department": per_dept,
                "queues": {q: sum(i.queue == q for i in self.items) for q in sorted({i.queue for i in self.items})}}


def _members(snapshot: DirectorySnapshot, group_id: str | None) -> list[DirectoryUser]:
    if group_id is None:
        return []
    return sorted((u for u in snapshot.users.values()
                   if not u.disabled and group_id in snapshot.groups_of(u.id)), key=lambda u: u.username)


def reviewer_queues(snapshot: DirectorySnapshot, policy: Policy) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Queue id -> its reviewers (members, direct or nested, of the scope's group; enabled only)."""
    assert policy.reviewers is not None
    warnings: list[str] = []
    out: dict[str, list[tuple[str, str]]] = {}
    entries = [(PRIVACY_OFFICER, policy.reviewers.privacy_officer)] + [(s.id, s.group) for s in policy.reviewers.scopes]
    for qid, ref in entries:
        group = ref.resolve(snapshot)
        if group is None:
            warnings.append(f"reviewers: group {ref} of {qid} is not in the directory; its items go to "
                            f"{PRIVACY_OFFICER}" if qid != PRIVACY_OFFICER else
                            f"reviewers: the privacy officer's group {ref} is not in the directory")
        out[qid] = [(u.id, u.username) for u in _members(snapshot, group.id if group else None)]
    return out, warnings


def route(policy: Policy, reviewers: Mapping[str, Iterable[tuple[str, str]]], subject_id: str,
          department: str, role: str) -> str:
    """The queue of an item: the first scope that covers the user's department or the role and has
    a reviewer other than the user (nobody reviews their own access: the other members do, and
    :func:`bridge.review.campaign.decide` refuses the user); else the privacy officer's."""
    return Router(policy, reviewers)(subject_id, department, role)


class Router:
    """:func:`route` with the reviewer sets computed once (a review routes every assignment)."""

    def __init__(self, policy: Policy, reviewers: Mapping[str, Iterable[tuple[str, str]]]):
        assert policy.reviewers is not None
        self.scopes = [(s, frozenset(sid for sid, _ in reviewers.get(s.id, ()))) for s in policy.reviewers.scopes]
        self.cache: dict[tuple[str, str], list[tuple[str, frozenset[str]]]] = {}

    def __call__(self, subject_id: str, department: str, role: str) -> str:
        key = (department, role)
        candidates = self.cache.get(key)
        if candidates is None:
            candidates = self.cache[key] = [(s.id, m) for s, m in self.scopes if m and s.covers(department, role)]
        for qid, members in candidates:
            if len(members) > 1 or subject_id not in members:
                return qid
        return PRIVACY_OFFICER


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_review(snapshot: DirectorySnapshot, policy: Policy, *, assignments: Iterable[StoredAssignment],
                 activity: Mapping[str, Activity], hand: Iterable[HandAssignment] = (),
                 keycloak: KeycloakFacts | None = None, scope_checks: Mapping[str, ScopeCheck] | None = None,
                 excepted: Mapping[tuple[str, str], str] | None = None, dormant_days: int = 90,
                 now: dt.datetime | None = None,
                 target_accounts: Mapping[str, Mapping[str, str]] | None = None) -> Review:
    """The review of every user (see the module docstring for the flags)."""
    if policy.reviewers is None:
        raise ValueError("the policy has no reviewers: section; an access review needs one")
    now = now or dt.datetime.now(dt.UTC)
    dormant_before = _iso(now - dt.timedelta(days=dormant_days))
    ev = evaluate(snapshot, policy)
    reviewers, warnings = reviewer_queues(snapshot, policy)
    users: dict[str, UserReview] = {}

    def user(sid: str, username: str, department: str = "") -> UserReview:
        u = users.get(sid)
        if u is None:
            u = users[sid] = UserReview(sid, username, department)
        return u

    stored: dict[str, list[StoredAssignment]] = {}
    for a in assignments:
        stored.setdefault(a.subject_id.lower(), []).append(a)
    kc = keycloak or KeycloakFacts()
    kc_by_dir = {a.directory_id: a for a in kc.accounts if a.directory_id}

    # 1. what each directory user holds: the policy's entitlements, then stored rows beyond them
    for uid, ent in ev.entitlements.items():
        d = ent.user
        held: dict[str, Item] = {}
        for role in sorted(ent.roles):
            g = ent.grants_for(role)[0]
            held[role] = Item(uid, d.username, d.department, role, "policy", g.group_dn, g.rule_id)
        for row in stored.get(uid, []):
            if row.role not in held:
                source = "policy" if row.managed else "manual"
                held[row.role] = Item(uid, d.username, d.department, row.role, source, row.source_group_dn, row.rule_id)
        for (sid, role), reason in (excepted or {}).items():
            if sid == uid and role in ent.roles:
                held[role].source = "excepted"
                user(uid, d.username, d.department).evidence.setdefault("exceptions", []).append(
                    {"role": role, "reason": reason})
        for role, members in kc.role_members.items():
            if uid in members and role not in held:
                held[role] = Item(uid, d.username, d.department, role, "keycloak-console")
        if held or d.disabled:
            u = user(uid, d.username, d.department)
            u.items = list(held.values())
        if d.disabled and (uid in kc_by_dir or uid in stored or held):
            u = user(uid, d.username, d.department)
            u.flags.add("disabled")
            u.evidence["disabled"] = {"in_keycloak": uid in kc_by_dir, "assignments": len(stored.get(uid, []))}
        elif d.disabled:
            user(uid, d.username, d.department).flags.add("disabled")
        for hit in ent.conflicts:
            u = user(uid, d.username, d.department)
            u.flags.add("sod")
            u.evidence.setdefault("sod", []).append({"conflict": hit.conflict.id, "action": hit.conflict.action,
                                                     "roles": sorted(hit.roles), "reason": hit.conflict.reason})

    # 2. orphans: accounts and assignments of people the directory does not know
    for acc in kc.accounts:
        if acc.directory_id and acc.directory_id in snapshot.users:
            continue
        sid = acc.directory_id or f"keycloak:{acc.keycloak_id}"
        u = user(sid, acc.username)
        u.flags.add("orphan")
        u.evidence.setdefault("orphan", []).append(
            {"where": "keycloak", "username": acc.username, "enabled": acc.enabled,
             "why": "not federated from the directory (local account)" if not acc.directory_id
             else "LDAP_ID not in the directory"})
        for role, members in kc.role_members.items():
            if sid in members and not any(i.role == role for i in u.items):
                u.items.append(Item(sid, acc.username, "", role, "keycloak-console"))
    for target, accounts in (target_accounts or {}).items():  # a PACS provisioned over SCIM
        for sid, username in accounts.items():
            if sid in snapshot.users:
                continue
            u = user(sid, username)
            u.flags.add("orphan")
            u.evidence.setdefault("orphan", []).append(
                {"where": target, "username": username, "why": "its directory id is not in the directory"})
    for sid, rows in stored.items():
        if sid in snapshot.users:
            continue
        u = user(sid, rows[0].username)
        u.flags.add("orphan")
        u.evidence.setdefault("orphan", []).append({"where": "store", "roles": sorted(r.role for r in rows)})
        for r in rows:
            if not any(i.role == r.role for i in u.items):
                u.items.append(Item(sid, r.username, "", r.role, "policy" if r.managed else "manual",
                                    r.source_group_dn, r.rule_id))

    # 3. per-user facts and flags
    router = Router(policy, reviewers)
    privileged_roles = {name for name, r in policy.roles.items() if r.effective_permissions & PRIVILEGED}
    hand_by_subject: dict[str, list[HandAssignment]] = {}
    for h in hand:
        hand_by_subject.setdefault(h.subject, []).append(h)
    for sid, u in users.items():
        act = activity.get(sid)
        if act is not None:
            u.last_login, u.last_access = act.last_login, act.last_access
        seen = act.last_seen if act else None
        if u.items and (seen is None or seen < dormant_before):
            u.flags.add("dormant")
            u.evidence["dormant"] = {"last_seen": seen, "days": dormant_days}
        priv = sorted(i.role for i in u.items if i.role in privileged_roles)
        if priv:
            u.flags.add("privileged")
            u.evidence["privileged"] = priv
        off_policy = [i.role for i in u.items if i.source in ("keycloak-console", "manual")]
        events = hand_by_subject.get(sid, [])
        if off_policy or events:
            u.flags.add("hand-assigned")
            u.evidence["hand-assigned"] = {
                "roles": sorted(off_policy),
                "console_changes": [{"role": h.role, "time": h.time, "admin": h.admin, "event_id": h.event_id}
                                    for h in events[-10:]]}
        check = (scope_checks or {}).get(sid)
        if check and check.count:
            u.flags.add("out-of-scope")
            u.evidence["out-of-scope"] = {"count": check.count, "departments": sorted(check.departments),
                                          "examples": check.examples}
        for i in u.items:
            i.queue = router(sid, u.department, i.role)
    return Review(users, reviewers, warnings + [
        f"rule {r.id}: group {r.group} not in the directory" for r in ev.unresolved_rules])


def scoped_departments(policy: Policy, review_users: Mapping[str, UserReview] | None = None, *,
                       snapshot: DirectorySnapshot | None = None) -> dict[str, frozenset[str]]:
    """Subject -> the departments their roles cover, for users whose *every* role is limited to
    departments (an unscoped role reaches every study, so nothing is outside)."""
    out: dict[str, frozenset[str]] = {}
    ev = evaluate(snapshot, policy) if snapshot is not None else None
    source: dict[str, set[str]] = {}
    if ev is not None:
        source = {uid: set(ent.roles) for uid, ent in ev.entitlements.items() if ent.roles}
    for sid, u in (review_users or {}).items():
        source.setdefault(sid, set()).update(i.role for i in u.items)
    for sid, roles in source.items():
        defined = [policy.roles[r] for r in roles if r in policy.roles]
        if defined and all(r.departments for r in defined):
            out[sid] = frozenset(d for r in defined for d in r.departments)
    return out
