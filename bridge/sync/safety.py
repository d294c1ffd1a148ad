"""The safety gate between a plan and its application (pure).

Mirrors Microsoft Entra Connect's export deletion threshold: a run that would remove more than
`count` managed assignments, or more than `percent` % of them, on any target stops before changing
anything, with an audit event, unless the operator passes ``--allow-deletes`` after reviewing the
plan.  A directory that shrank by more than `percent` % of its users since the last good run is
treated the same way (a wrong search base or a half-replicated DC looks exactly like that).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sync.model import Plan


@dataclass(frozen=True)
class Thresholds:
    count: int = 500
    percent: float = 10.0


@dataclass(frozen=True)
class GateResult:
    ok: bool
    reasons: tuple[str, ...] = ()


def check(plan: Plan, thresholds: Thresholds, *, previous_users: int | None = None,
          allow_deletes: bool = False) -> GateResult:
    """Whether `plan` may be applied; if not, every reason, worded for the runbook."""
    reasons: list[str] = []
    for t in plan.targets:
        n = len(t.removals)
        if n == 0:
            continue
        pct = 100.0 * n / t.managed_total if t.managed_total else 100.0
        if n > thresholds.count:
            reasons.append(f"{t.target}: {n} removals exceed the absolute threshold ({thresholds.count})")
        elif pct > thresholds.percent and n > 1:
            # a single removal out of very few assignments is a normal leaver, not a mass deletion
            reasons.append(f"{t.target}: {n} removals are {pct:.1f}% of {t.managed_total} managed "
                           f"assignments (threshold {thresholds.percent:g}%)")
    users = plan.directory.get("users", 0)
    if previous_users and users < previous_users:
        shrink = 100.0 * (previous_users - users) / previous_users
        if shrink > thresholds.percent:
            reasons.append(f"directory shrank from {previous_users} to {users} users ({shrink:.1f}%, "
                           f"threshold {thresholds.percent:g}%)")
    if reasons and allow_deletes:
        return GateResult(True, tuple(f"allowed by --allow-deletes: {r}" for r in reasons))
    return GateResult(not reasons, tuple(reasons))
