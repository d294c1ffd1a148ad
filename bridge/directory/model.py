"""What the bridge knows about the directory at one moment: an immutable `DirectorySnapshot`.

Why immutable and keyed by stable id: the sync computes its plan as a pure function of one
snapshot and the policy, so the same snapshot must always give the same plan, and a user who is
renamed or moved (new DN, new username) must still be the same person.  Everything here is keyed
by the directory's stable id (AD ``objectGUID``, OpenLDAP ``entryUUID``); DNs are attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bridge.errors import UnavailableError

#: the Keycloak user attribute in which LDAP user federation keeps a user's stable directory id
#: (objectGUID / entryUUID): how the sync, the login and the audit puller find a directory user's
#: Keycloak account
LDAP_ID = "LDAP_ID"


class DirectoryUnavailable(UnavailableError):
    """The directory cannot be trusted for this run (unreachable, bind refused, empty result,
    missing base).  The sync makes no change at all when it sees this: an empty answer must never
    be read as "everyone left"."""


def normalize_dn(dn: str) -> str:
    """A comparable form of a DN: lower case, no blanks around ``=`` and ``,``.

    Why not full RFC 4514 canonicalisation: directory DNs in the bridge's policy are written by
    people and returned by servers; both use the same escaping, and attribute type names differ
    only in case between AD (``CN=``) and OpenLDAP (``cn=``)."""
    rdns = dn.split(",") if "\\" not in dn else _split_dn(dn)
    parts = []
    for rdn in rdns:
        attr, _, value = rdn.partition("=")
        parts.append(f"{attr.strip().lower()}={value.strip().lower()}")
    return ",".join(parts)


def _split_dn(dn: str) -> list[str]:
    """Split on unescaped commas."""
    out, cur, escaped = [], [], False
    for ch in dn:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur or out:
        out.append("".join(cur))
    return out


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    """A person in the directory.  `id` is the stable id; the rest may change at any time."""

    id: str
    dn: str
    username: str
    display_name: str = ""
    email: str = ""
    department: str = ""
    institution: str = ""
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class DirectoryGroup:
    """A group; `name` (the CN) is informative only and never used to grant anything."""

    id: str
    dn: str
    name: str = ""


def _frozen(d: Mapping) -> Mapping:  # type: ignore[type-arg]
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class DirectorySnapshot:
    """Users and groups by stable id, and each user's *effective* groups (nesting resolved).

    `memberships[user_id]` holds the ids of every group the user belongs to directly or through
    nested groups.  `watermark` is flavour-specific data telling the reader, next time, whether
    anything changed since (see :mod:`bridge.directory.reader`)."""

    users: Mapping[str, DirectoryUser]
    groups: Mapping[str, DirectoryGroup]
    memberships: Mapping[str, frozenset[str]]
    source: str = ""
    watermark: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", _frozen(self.users))
        object.__setattr__(self, "groups", _frozen(self.groups))
        object.__setattr__(
            self, "memberships", _frozen({u: frozenset(g) for u, g in self.memberships.items()})
        )
        object.__setattr__(self, "watermark", _frozen(self.watermark))
        by_dn = {normalize_dn(g.dn): g.id for g in self.groups.values()}
        object.__setattr__(self, "_group_by_dn", by_dn)

    def groups_of(self, user_id: str) -> frozenset[str]:
        return self.memberships.get(user_id, frozenset())

    def group_by_dn(self, dn: str) -> DirectoryGroup | None:
        gid = self._group_by_dn.get(normalize_dn(dn))  # type: ignore[attr-defined]
        return self.groups.get(gid) if gid else None

    def user_by_username(self, username: str) -> DirectoryUser | None:
        """Lookup for `policy explain`; usernames are compared case-insensitively like AD does."""
        wanted = username.lower()
        for u in self.users.values():
            if u.username.lower() == wanted:
                return u
        return None

    def summary(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "disabled": sum(1 for u in self.users.values() if u.disabled),
            "groups": len(self.groups),
            "memberships": sum(len(g) for g in self.memberships.values()),
        }
