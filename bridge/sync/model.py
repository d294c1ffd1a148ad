"""Values the sync passes between its steps: desired state, a target's actual state, the plan.

Assignments are keyed by the directory's stable id (objectGUID / entryUUID) and the role name;
usernames are carried only to talk to targets and humans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.directory.model import DirectoryUser
from bridge.policy.model import Role

Key = tuple[str, str]  # (user stable id, role)


@dataclass(frozen=True)
class Why:
    """Why an assignment is desired: the first matching rule and group (others in `policy explain`)."""

    rule_id: str
    group_dn: str


@dataclass(frozen=True)
class DesiredState:
    """What every target should hold (managed roles only)."""

    users: dict[str, DirectoryUser]          # every directory user (incl. disabled)
    roles: dict[str, Role]                   # every role of the policy (created if missing)
    assignments: dict[Key, Why]              # (user id, role) -> why
    warnings: tuple[str, ...] = ()
    #: entitled by the policy but withheld by an access review decision: key -> the reason shown
    exceptions: dict[Key, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ActualState:
    """What one target holds today, restricted to roles the bridge manages.

    `foreign_roles`: roles of the policy that exist in the target *without* the bridge's marker
    (created by hand): the bridge never touches them and reports them."""

    roles: frozenset[str]
    assignments: frozenset[Key]
    usernames: dict[str, str] = field(default_factory=dict)  # user id -> username as the target knows it
    foreign_roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Change:
    user_id: str
    username: str
    role: str
    rule_id: str = ""
    group_dn: str = ""
    reason: str = ""  # for removals: left-disabled | left-gone | no-longer-entitled | review-revoked: ...


@dataclass(frozen=True)
class Leaver:
    user_id: str
    username: str
    reason: str  # disabled | gone


@dataclass(frozen=True)
class TargetPlan:
    """The changes for one target.  `managed_total` = managed assignments today (threshold base)."""

    target: str
    role_creations: tuple[str, ...]
    adds: tuple[Change, ...]
    removals: tuple[Change, ...]
    leavers: tuple[Leaver, ...]
    managed_total: int
    skipped_roles: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.role_creations or self.adds or self.removals or self.leavers)


@dataclass(frozen=True)
class Plan:
    """The whole plan: one TargetPlan per configured target, plus directory facts for the gate."""

    targets: tuple[TargetPlan, ...]
    directory: dict[str, int]
    warnings: tuple[str, ...] = ()
    #: assignments withheld by access review decisions (key -> reason), from the desired state
    exceptions: dict[Key, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return all(t.empty for t in self.targets)

    def counts(self) -> dict[str, int]:
        return {
            "role_creations": sum(len(t.role_creations) for t in self.targets),
            "adds": sum(len(t.adds) for t in self.targets),
            "removals": sum(len(t.removals) for t in self.targets),
            "leavers": sum(len(t.leavers) for t in self.targets),
        }
