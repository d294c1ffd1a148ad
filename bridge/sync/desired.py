"""Desired state = f(snapshot, policy): pure, so a plan can be reproduced and unit-tested."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from bridge.directory.model import DirectorySnapshot
from bridge.policy.evaluate import evaluate
from bridge.policy.model import Policy
from bridge.sync.model import DesiredState, Key, Why


def desired_state(snapshot: DirectorySnapshot, policy: Policy) -> DesiredState:
    ev = evaluate(snapshot, policy)
    assignments: dict[Key, Why] = {}
    warnings: list[str] = [
        f"rule {r.id} (rules[{r.index}]): group {r.group} not found in the directory; it grants nothing"
        for r in ev.unresolved_rules
    ]
    for uid, ent in ev.entitlements.items():
        for role in sorted(ent.roles):
            g = ent.grants_for(role)[0]
            assignments[(uid, role)] = Why(g.rule_id, g.group_dn)
        for hit in ent.conflicts:
            verb = "none of them granted" if hit.conflict.action == "deny" else "granted anyway (warn)"
            warnings.append(f"SoD {hit.conflict.id}: {ent.user.username} would hold "
                            f"{', '.join(sorted(hit.roles))}; {verb}")
    return DesiredState(dict(snapshot.users), dict(policy.roles), assignments, tuple(warnings))


class Withheld(Protocol):
    """An access review's revocation (bridge/review/exceptions.py) as the sync needs it."""

    def describe(self) -> str: ...


def withhold(desired: DesiredState, exceptions: Mapping[Key, Withheld]) -> DesiredState:
    """``desired`` without the assignments an access review revoked (pure): each one withheld is
    kept in ``exceptions`` with its reason and named in the plan's warnings on every run, so
    ``sync --plan`` always says why an entitled user lacks a role."""
    wanted = {(uid.lower(), role): key for key in desired.assignments for uid, role in (key,)}
    notes: dict[Key, str] = {}
    warnings: list[str] = []
    for (sid, role), exc in sorted(exceptions.items()):
        key = wanted.get((sid.lower(), role))
        if key is None:
            continue
        reason = exc.describe()
        notes[key] = reason
        user = desired.users.get(key[0])
        warnings.append(f"review exception: {user.username if user else key[0]} does not get {role}: {reason}")
    if not notes:
        return desired
    return replace(desired, assignments={k: w for k, w in desired.assignments.items() if k not in notes},
                   exceptions=notes, warnings=desired.warnings + tuple(warnings))
