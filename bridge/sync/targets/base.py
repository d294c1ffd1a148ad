"""The target interface.

Why apply is per user with failures collected: one broken account (locked in Keycloak, rejected
by the PACS) must not stop a hospital's other changes; failed users are reported, recorded in the
run history and, since the plan is recomputed from scratch every run, retried next time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.errors import UnavailableError
from bridge.policy.model import Role
from bridge.sync.model import ActualState, Change, DesiredState, Leaver, TargetPlan


class TargetError(UnavailableError):
    """The target as a whole cannot be read or written (the run stops for this target)."""

    area = "sync"


@dataclass
class ApplyResult:
    target: str
    roles_created: int = 0
    added: int = 0
    removed: int = 0
    leavers: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    applied: list[tuple[str, Change]] = field(default_factory=list)  # ("add"|"remove", change)

    def fail(self, user: str, what: str, error: BaseException | str) -> None:
        self.failures.append({"target": self.target, "user": user, "change": what, "error": str(error)[:500]})


Progress = Callable[[int], None]


class Target:
    name = "target"

    def prepare(self, *, full: bool) -> None:
        """Before reading: e.g. let Keycloak import users from LDAP."""

    def read(self, desired: DesiredState) -> ActualState:
        raise NotImplementedError

    def create_role(self, role: Role) -> None:
        raise NotImplementedError

    def add(self, change: Change, desired: DesiredState) -> None:
        raise NotImplementedError

    def remove(self, change: Change) -> None:
        raise NotImplementedError

    def offboard(self, leaver: Leaver) -> None:
        """After a leaver's roles are gone: end sessions, revoke tokens (target-specific)."""

    def apply(self, plan: TargetPlan, desired: DesiredState, progress: Progress | None = None) -> ApplyResult:
        """Apply `plan`, user by user; never raises for one user's failure."""
        res = ApplyResult(self.name)
        step = progress or (lambda n: None)
        for name in plan.role_creations:
            try:
                self.create_role(desired.roles[name])
                res.roles_created += 1
            except Exception as exc:
                res.fail("-", f"create role {name}", exc)
        failed_roles = {f["change"].removeprefix("create role ") for f in res.failures}
        for c in plan.removals:
            try:
                self.remove(c)
                res.removed += 1
                res.applied.append(("remove", c))
            except Exception as exc:
                res.fail(c.username, f"remove {c.role}", exc)
            step(1)
        for c in plan.adds:
            if c.role in failed_roles:
                res.fail(c.username, f"add {c.role}", "role could not be created")
                step(1)
                continue
            try:
                self.add(c, desired)
                res.added += 1
                res.applied.append(("add", c))
            except Exception as exc:
                res.fail(c.username, f"add {c.role}", exc)
            step(1)
        failed_users = {f["user"] for f in res.failures}
        for lv in plan.leavers:
            if lv.username in failed_users:
                continue  # roles not all removed yet: offboard next run, after they are
            try:
                self.offboard(lv)
                res.leavers += 1
            except Exception as exc:
                res.fail(lv.username, "offboard", exc)
        return res
