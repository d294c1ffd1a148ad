"""Desired state = f(snapshot, policy): pure, so a plan can be reproduced and unit-tested."""

from __future__ import annotations

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
