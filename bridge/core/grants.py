"""Grants: what a PACS token allows, as (permissions, scope) pairs -- one per role, share or
break-glass request -- never merged.

Why not one merged set of permissions and scopes: an unscoped radiologist role plus a
Cardiology-scoped resident role merged into "radiologist permissions, Cardiology only" (the
unscoped role was lost), and two differently scoped roles lent each other their permissions
(a resident's ``delete`` in Cardiology became ``delete`` in Oncology too).  Here a request is
allowed when ONE grant holds every permission the route needs AND covers every study the request
touches; a listing shows the studies covered by ANY grant that holds the listing's permission.

The claim (token format 2, see :mod:`bridge.core.token_format`)::

    "grants": [
      {"kind": "role", "role": "radiologist", "permissions": ["download", "view"], "scope": {}},
      {"kind": "role", "role": "resident-cardio", "permissions": ["view"],
       "scope": {"departments": ["Cardiology"]}},
      {"kind": "share", "role": null, "permissions": ["view"],
       "scope": {"studies": ["1.2.840..."]}, "exp": 1767225600}
    ]

``scope``: a key that is absent, null or ``[]`` does not restrict; each non-empty key restricts
(all keys must hold; any value within one list may match).  ``studies`` (StudyInstanceUIDs) and
``patients`` (PatientIDs) are what per-study shares and break-glass grants use -- the same
mechanism as a department-scoped role, not a second one.  ``exp``: the grant ends before the token
does (a 60-minute break-glass grant inside a longer session).

Fail closed: an unknown scope key, a value that is not a list of strings, an unknown ``kind``, a
permissions list that is not a list of strings -- such a grant matches nothing (it is dropped); a
token without a ``grants`` list allows nothing.  Permissions are taken as issued (already
expanded by the bridge, :func:`bridge.core.permissions.expand`); a verifier adds nothing.

Stdlib only (runs inside Orthanc).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

#: the claim holding the grants
CLAIM = "grants"
#: scope keys, in the order they are checked, and the StudyInfo attribute each one restricts
SCOPE_KEYS: dict[str, str] = {
    "departments": "department",
    "institutions": "institution",
    "studies": "study_uid",
    "patients": "patient_id",
}
#: where a grant comes from: a policy role, an internal share, an emergency (break-glass) request
KINDS = frozenset({"role", "share", "break-glass"})


@dataclass(frozen=True)
class StudyInfo:
    """What a scope check and the audit trail need to know about one stored study."""

    orthanc_id: str
    study_uid: str
    patient_id: str
    department: str
    institution: str


@dataclass(frozen=True)
class Grant:
    """One (permissions, scope) pair.  A scope field of None does not restrict."""

    permissions: frozenset[str]
    departments: frozenset[str] | None = None
    institutions: frozenset[str] | None = None
    studies: frozenset[str] | None = None
    patients: frozenset[str] | None = None
    kind: str = "role"
    role: str | None = None
    exp: int | None = None

    @cached_property
    def unrestricted(self) -> bool:
        """Covers every study (no scope key restricts).  Computed once per grant: the plugin asks
        on every request, and a grant lives as long as its verified token in the verifier's cache."""
        return self.departments is None and self.institutions is None and self.studies is None \
            and self.patients is None

    def holds(self, required: Iterable[str]) -> bool:
        return all(p in self.permissions for p in required)

    def covers(self, study: StudyInfo | None) -> bool:
        """Is this study inside the grant's scope?  An unknown study is covered only by an
        unrestricted grant (nothing can be checked about it)."""
        if self.unrestricted:
            return True
        if study is None:
            return False
        for key, attribute in SCOPE_KEYS.items():
            allowed: frozenset[str] | None = getattr(self, key)
            if allowed is not None and getattr(study, attribute) not in allowed:
                return False
        return True

    def outside(self, study: StudyInfo | None) -> str | None:
        """Why ``study`` is not covered (``department Oncology``), None when it is: for denial reasons."""
        if self.covers(study):
            return None
        if study is None:
            return "a study that could not be looked up"
        for key, attribute in SCOPE_KEYS.items():
            allowed: frozenset[str] | None = getattr(self, key)
            value = getattr(study, attribute)
            if allowed is not None and value not in allowed:
                return f"{attribute.replace('_', ' ')} {value or '(none)'}"
        return "a study outside its scope"  # pragma: no cover - covers() said no for a reason above

    def narrowed(self, asked: Iterable[str]) -> Grant:
        """The same grant with only the permissions in ``asked`` (an OAuth ``scope`` request)."""
        return replace(self, permissions=self.permissions & frozenset(asked))

    def scope(self) -> dict[str, list[str]]:
        """The claim form of the scope (only the restricting keys)."""
        return {key: sorted(value) for key in SCOPE_KEYS if (value := getattr(self, key)) is not None}

    def to_claim(self) -> dict[str, Any]:
        claim: dict[str, Any] = {"kind": self.kind, "role": self.role,
                                 "permissions": sorted(self.permissions), "scope": self.scope()}
        if self.exp is not None:
            claim["exp"] = int(self.exp)
        return claim

    @cached_property
    def description(self) -> str:
        """:meth:`describe`, built once (allowed requests name their grant in the audit trail)."""
        who = f"{self.kind} {self.role}" if self.role else self.kind
        where = "; ".join(f"{k} {', '.join(v)}" for k, v in self.scope().items()) or "everywhere"
        return f"{who} ({where})"

    def describe(self) -> str:
        """One line for audit reasons and ``policy explain``: ``role radiologist (everywhere)``."""
        return self.description


def _strings(value: Any) -> frozenset[str] | bool | None:
    """A scope value: None (does not restrict), a set of names, or False (malformed)."""
    if value is None or value == []:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return frozenset(value)
    return False


def grant_from_claim(item: Any, now: float | None = None) -> Grant | None:
    """One grant of the claim, or None when it is malformed or expired (it then matches nothing)."""
    if not isinstance(item, Mapping):
        return None
    kind = item.get("kind", "role")
    role = item.get("role")
    permissions = item.get("permissions")
    scope = item.get("scope", {})
    exp = item.get("exp")
    if kind not in KINDS or not (role is None or isinstance(role, str)):
        return None
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        return None
    if scope is None:
        scope = {}
    if not isinstance(scope, Mapping) or any(k not in SCOPE_KEYS for k in scope):
        return None
    if exp is not None:
        if type(exp) is not int:
            return None
        if exp <= (time.time() if now is None else now):
            return None
    values: dict[str, frozenset[str] | None] = {}
    for key in SCOPE_KEYS:
        parsed = _strings(scope.get(key))
        if parsed is False:
            return None
        values[key] = parsed  # type: ignore[assignment]
    return Grant(frozenset(permissions), kind=kind, role=role, exp=exp, **values)


def from_claims(claims: Mapping[str, Any], now: float | None = None) -> tuple[Grant, ...]:
    """The token's usable grants (malformed and expired ones left out: they allow nothing)."""
    items = claims.get(CLAIM)
    if not isinstance(items, list):
        return ()
    out = (grant_from_claim(item, now) for item in items)
    return tuple(g for g in out if g is not None)


def holding(grants: Iterable[Grant], required: Iterable[str]) -> tuple[Grant, ...]:
    """The grants that hold every required permission."""
    needed = tuple(required)
    return tuple(g for g in grants if g.holds(needed))


def unrestricted(grants: Iterable[Grant], required: Iterable[str]) -> bool:
    """Does one grant hold the permissions everywhere?  (Then a listing is the core's answer unchanged.)"""
    return any(g.unrestricted for g in holding(grants, required))


def allows(grants: Iterable[Grant], required: Iterable[str],
           studies: Iterable[StudyInfo | None]) -> Grant | None:
    """The first grant that holds every required permission and covers every study, or None."""
    touched = tuple(studies)
    for grant in holding(grants, required):
        if all(grant.covers(s) for s in touched):
            return grant
    return None


def visible(grants: Iterable[Grant], required: Iterable[str], study: StudyInfo | None) -> bool:
    """May this study appear in a listing made under ``required``?  (Any grant holding it covers it.)"""
    return allows(grants, required, (study,)) is not None


def permissions_of(grants: Iterable[Grant]) -> frozenset[str]:
    """Every permission some grant holds, wherever it applies (the route check's first filter)."""
    out: set[str] = set()
    for g in grants:
        out |= g.permissions
    return frozenset(out)


def any_restricted(grants: Iterable[Grant]) -> bool:
    """Does the token hold any grant limited to some studies?  The hot path's first question: a token
    whose grants are all unrestricted is decided on the route table alone (no study lookup)."""
    return not all(g.unrestricted for g in grants)


def expiry(grants: Iterable[Grant]) -> float:
    """When the first of these grants ends (``exp``), or infinity: a cached parse is redone then."""
    return min((g.exp for g in grants if g.exp is not None), default=float("inf"))


def why_not(grants: Iterable[Grant], studies: Iterable[StudyInfo | None]) -> str:
    """Why none of ``grants`` (each holding the permissions) covers every study: each grant and the
    first study it does not cover, for the audit trail of a denial."""
    touched = tuple(studies)
    parts = []
    for grant in grants:
        miss = next((why for s in touched if (why := grant.outside(s)) is not None), None)
        if miss is not None:
            parts.append(f"{grant.describe()} does not cover {miss}")
    return "no single grant covers every study the request touches: " + "; ".join(parts)
