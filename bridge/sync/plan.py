"""Plan = diff(desired, actual) per target (pure), and its rendering as a table or JSON."""

from __future__ import annotations

from typing import Any

from bridge.sync.model import ActualState, Change, DesiredState, Leaver, Plan, TargetPlan


def plan_target(target: str, desired: DesiredState, actual: ActualState) -> TargetPlan:
    """What `target` must do to match `desired`.  Only managed roles are ever compared or removed."""
    creations = tuple(sorted(r for r in desired.roles if r not in actual.roles and r not in actual.foreign_roles))
    skipped = tuple(sorted(actual.foreign_roles & set(desired.roles)))
    want = {k: w for k, w in desired.assignments.items() if k[1] not in actual.foreign_roles}
    adds = []
    for (uid, role), why in sorted(want.items(), key=lambda kv: (desired.users[kv[0][0]].username, kv[0][1])):
        if (uid, role) not in actual.assignments:
            adds.append(Change(uid, desired.users[uid].username, role, why.rule_id, why.group_dn))
    removals = []
    leavers: dict[str, Leaver] = {}
    for uid, role in sorted(actual.assignments - set(want)):
        user = desired.users.get(uid)
        if user is None:
            reason, name = "left-gone", actual.usernames.get(uid, uid)
            leavers.setdefault(uid, Leaver(uid, name, "gone"))
        elif user.disabled:
            reason, name = "left-disabled", user.username
            leavers.setdefault(uid, Leaver(uid, name, "disabled"))
        elif (uid, role) in desired.exceptions:
            reason, name = f"review-revoked: {desired.exceptions[(uid, role)]}", user.username
        else:
            reason, name = "no-longer-entitled", user.username
        removals.append(Change(uid, name, role, reason=reason))
    removals.sort(key=lambda c: (c.username, c.role))
    return TargetPlan(target, creations, tuple(adds), tuple(removals),
                      tuple(sorted(leavers.values(), key=lambda lv: lv.username)),
                      len(actual.assignments), skipped)


def make_plan(desired: DesiredState, actuals: dict[str, ActualState], directory: dict[str, int]) -> Plan:
    targets = tuple(plan_target(name, desired, actual) for name, actual in actuals.items())
    warnings = list(desired.warnings)
    for t in targets:
        for role in t.skipped_roles:
            warnings.append(f"{t.target}: role {role!r} exists but was not created by the bridge "
                            "(no managed marker); left alone, not assigned")
    return Plan(targets, directory, tuple(warnings), dict(desired.exceptions))


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    def change(c: Change) -> dict[str, str]:
        d = {"user_id": c.user_id, "username": c.username, "role": c.role}
        for k in ("rule_id", "group_dn", "reason"):
            if getattr(c, k):
                d[k] = getattr(c, k)
        return d

    return {
        "empty": plan.empty,
        "counts": plan.counts(),
        "directory": dict(plan.directory),
        "warnings": list(plan.warnings),
        "exceptions": [{"user_id": uid, "role": role, "reason": why}
                       for (uid, role), why in sorted(plan.exceptions.items())],
        "targets": [
            {
                "target": t.target,
                "managed_total": t.managed_total,
                "role_creations": list(t.role_creations),
                "adds": [change(c) for c in t.adds],
                "removals": [change(c) for c in t.removals],
                "leavers": [{"user_id": lv.user_id, "username": lv.username, "reason": lv.reason}
                            for lv in t.leavers],
                "skipped_roles": list(t.skipped_roles),
            }
            for t in plan.targets
        ],
    }


def render_plan(plan: Plan, console: Any) -> None:
    """A readable plan on a rich console: one table per target, then warnings."""
    from rich.table import Table

    d = plan.directory
    console.print(f"Directory: {d.get('users', 0)} users ({d.get('disabled', 0)} disabled), "
                  f"{d.get('groups', 0)} groups")
    for t in plan.targets:
        if t.empty:
            console.print(f"[bold]{t.target}[/]: no changes ({t.managed_total} managed assignments)")
            continue
        table = Table(title=f"{t.target}: {len(t.adds)} to add, {len(t.removals)} to remove, "
                            f"{len(t.role_creations)} roles to create, {len(t.leavers)} leavers")
        for col in ("", "user", "role", "why"):
            table.add_column(col)
        for r in t.role_creations:
            table.add_row("[cyan]create[/]", "", r, "role in policy, missing in target")
        for c in t.adds:
            table.add_row("[green]+[/]", c.username, c.role, f"rule {c.rule_id} via {c.group_dn}")
        for c in t.removals:
            table.add_row("[red]-[/]", c.username, c.role, c.reason)
        for lv in t.leavers:
            table.add_row("[magenta]leaver[/]", lv.username, "", f"{lv.reason}: logout + token revocation")
        console.print(table)
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {w}")
