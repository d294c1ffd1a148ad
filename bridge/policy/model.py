"""The access policy: roles (permissions + optional scopes), rules (directory group -> roles), and
separation-of-duty conflicts.  Loaded from YAML by :mod:`bridge.policy.loader`.

Why groups are referenced by DN or stable id and never by bare name: hospitals have several groups
called "PACS-Users" in different OUs; Keycloak's memberOf mapper matches on the CN alone and grants
all of them (keycloak#52048).  A rule here names exactly one group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from bridge.core.permissions import Permission, expand
from bridge.directory.model import DirectoryGroup, DirectorySnapshot, normalize_dn

if TYPE_CHECKING:
    from bridge.policy.sharing import SharingPolicy


@dataclass(frozen=True)
class Role:
    """A PACS role.  `departments` / `institutions` (empty = everywhere) limit *which studies* the
    permissions apply to; the PACS token service and the store carry them with the assignment."""

    name: str
    description: str
    permissions: frozenset[Permission]
    departments: tuple[str, ...] = ()
    institutions: tuple[str, ...] = ()
    #: what holders of the role may do beyond its permissions (:data:`CAPABILITIES`): ``emergency``
    #: lets them ask for break-glass access to one study or patient (bridge/breakglass/)
    capabilities: frozenset[str] = frozenset()

    @property
    def effective_permissions(self) -> frozenset[Permission]:
        return expand(self.permissions)

    def scope(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if self.departments:
            out["departments"] = list(self.departments)
        if self.institutions:
            out["institutions"] = list(self.institutions)
        return out


#: capabilities a role may carry (``roles.<name>.capabilities``)
EMERGENCY = "emergency"
CAPABILITIES = frozenset({EMERGENCY})


@dataclass(frozen=True)
class EmergencyPolicy:
    """The ``emergency:`` section: what a break-glass grant allows and for how long.

    Why in the policy and not per request: the requester must not choose their own rights in an
    emergency; the privacy officer fixes them once, reviewed with the rest of the policy."""

    permissions: frozenset[Permission]
    #: a grant ends this long after it was given, and is never renewed (a new request is needed)
    lifetime_minutes: int = 60

    @property
    def effective_permissions(self) -> frozenset[Permission]:
        return expand(self.permissions)


@dataclass(frozen=True)
class GroupRef:
    """Exactly one of `dn` / `id` (AD objectGUID or OpenLDAP entryUUID, as text)."""

    dn: str | None = None
    id: str | None = None

    def resolve(self, snapshot: DirectorySnapshot) -> DirectoryGroup | None:
        if self.id:
            return snapshot.groups.get(self.id.lower())
        return snapshot.group_by_dn(self.dn or "")

    def matches(self, group: DirectoryGroup) -> bool:
        if self.id:
            return group.id == self.id.lower()
        return normalize_dn(group.dn) == normalize_dn(self.dn or "")

    def __str__(self) -> str:
        return f"id={self.id}" if self.id else f"dn={self.dn}"


@dataclass(frozen=True)
class Rule:
    """Members (direct or nested) of `group` get `roles`.  `id` appears in plans and audit events."""

    id: str
    index: int
    group: GroupRef
    roles: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Conflict:
    """Roles that must not be held together.  ``deny``: the user gets none of the conflicting roles
    (fail safe) and the plan reports it; ``warn``: the roles are granted and the conflict reported."""

    id: str
    roles: frozenset[str]
    action: Literal["deny", "warn"] = "deny"
    reason: str = ""


@dataclass(frozen=True)
class ReviewerScope:
    """Who reviews whom in an access review (recertification, docs/governance.md): the members of
    ``group`` review every role assignment of users whose directory department is in
    ``departments`` and every assignment of a role in ``roles`` (either list may be empty, not
    both).  ``id`` names the scope in the campaign, its audit events and the page."""

    id: str
    group: GroupRef
    departments: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    description: str = ""

    def covers(self, department: str, role: str) -> bool:
        dept = department.strip().lower()
        return (bool(dept) and dept in self._departments) or role in self.roles

    @cached_property
    def _departments(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.departments)


@dataclass(frozen=True)
class Reviewers:
    """The ``reviewers:`` section: the scopes, and the privacy officer's group, which receives
    every item no scope covers, every item a reviewer may not decide (their own) and every item
    left unanswered past the deadline (escalation)."""

    privacy_officer: GroupRef
    scopes: tuple[ReviewerScope, ...] = ()


@dataclass(frozen=True)
class Policy:
    roles: dict[str, Role]
    rules: tuple[Rule, ...]
    conflicts: tuple[Conflict, ...] = ()
    source: str = ""
    version: int = 1
    meta: dict[str, str] = field(default_factory=dict)
    #: the ``sharing:`` section (bridge/policy/sharing.py); None: the file allows no share at all
    sharing: SharingPolicy | None = None
    #: the ``reviewers:`` section (access reviews); None: no review can be run
    reviewers: Reviewers | None = None
    #: the ``emergency:`` section (break-glass); None: nobody can break the glass
    emergency: EmergencyPolicy | None = None

    def emergency_roles(self) -> frozenset[str]:
        """The roles whose holders may ask for break-glass access."""
        return frozenset(name for name, role in self.roles.items() if EMERGENCY in role.capabilities)
