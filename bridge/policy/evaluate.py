"""Who gets which role, and why: the policy applied to one directory snapshot (pure).

Used by `pacs-bridge policy explain` and by the sync's desired state, so the explanation an
administrator reads is exactly what the sync acts on.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core import grants as grants_mod
from bridge.directory.model import DirectorySnapshot, DirectoryUser
from bridge.policy.model import Conflict, Policy, Rule


@dataclass(frozen=True)
class Grant:
    """One reason a user holds a role: rule `rule_id` on group `group_dn` (direct or nested)."""

    role: str
    rule_id: str
    group_id: str
    group_dn: str


@dataclass(frozen=True)
class ConflictHit:
    conflict: Conflict
    roles: frozenset[str]


@dataclass(frozen=True)
class Entitlement:
    """A user's outcome.  `roles` is what the user holds after SoD; `grants` every reason found."""

    user: DirectoryUser
    grants: tuple[Grant, ...]
    roles: frozenset[str]
    conflicts: tuple[ConflictHit, ...]
    denied: frozenset[str]

    def grants_for(self, role: str) -> tuple[Grant, ...]:
        return tuple(g for g in self.grants if g.role == role)


@dataclass(frozen=True)
class Evaluation:
    entitlements: dict[str, Entitlement]  # by user id; every user of the snapshot
    unresolved_rules: tuple[Rule, ...]    # rules whose group is not in the directory (stale policy?)


def evaluate(snapshot: DirectorySnapshot, policy: Policy) -> Evaluation:
    """Apply `policy` to every user; disabled users get no role at all (leavers)."""
    group_rules: dict[str, list[Rule]] = {}
    unresolved: list[Rule] = []
    for rule in policy.rules:
        group = rule.group.resolve(snapshot)
        if group is None:
            unresolved.append(rule)
        else:
            group_rules.setdefault(group.id, []).append(rule)
    out: dict[str, Entitlement] = {}
    for uid, user in snapshot.users.items():
        out[uid] = entitle(user, snapshot, policy, group_rules)
    return Evaluation(out, tuple(unresolved))


def entitle(user: DirectoryUser, snapshot: DirectorySnapshot, policy: Policy,
            group_rules: dict[str, list[Rule]]) -> Entitlement:
    if user.disabled:
        return Entitlement(user, (), frozenset(), (), frozenset())
    grants: list[Grant] = []
    for gid in sorted(snapshot.groups_of(user.id)):
        for rule in group_rules.get(gid, ()):
            grants.extend(Grant(r, rule.id, gid, snapshot.groups[gid].dn) for r in rule.roles)
    held = {g.role for g in grants}
    hits: list[ConflictHit] = []
    denied: set[str] = set()
    for c in policy.conflicts:
        both = c.roles & held
        if len(both) >= 2:
            hits.append(ConflictHit(c, frozenset(both)))
            if c.action == "deny":
                denied |= both
    grants.sort(key=lambda g: (g.role, g.rule_id, g.group_dn))
    return Entitlement(user, tuple(grants), frozenset(held - denied), tuple(hits), frozenset(denied))


def pacs_grants(entitlement: Entitlement, policy: Policy) -> tuple[grants_mod.Grant, ...]:
    """The grants a PACS token of this user carries (one per role held, with the role's expanded
    permissions and scope, never merged): what the sync writes as assignment rows and the token
    service turns into the ``grants`` claim (:func:`bridge.tokens.claims.role_grant` does the same
    from a row)."""
    out = []
    for name in sorted(entitlement.roles):
        role = policy.roles[name]
        grant = grants_mod.grant_from_claim({
            "kind": "role", "role": name, "permissions": sorted(p.value for p in role.effective_permissions),
            "scope": role.scope()})
        if grant is not None:
            out.append(grant)
    return tuple(out)
