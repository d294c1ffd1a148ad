"""The one place that builds the claims of a PACS token (RFC 9068 JWT access token + IHE IUA).

Everything a PACS may rely on is decided here: who (``sub`` = the stable directory id, not a
Keycloak-internal id), for which PACS (``aud``), how they logged in (``auth_time``, ``acr``,
``amr``), what they may do (``grants``: one (permissions, scope) pair per role, never merged,
see :mod:`bridge.core.grants`; ``roles`` and ``permissions`` are their union, for display and the
OAuth ``scope``) and for how long (``exp``, capped by the configured maximum).
The header (``typ: at+jwt``, ``kid``) is set by :meth:`bridge.tokens.keys.KeyRing.sign`.

Pure functions over plain values: no Flask, no database, trivially testable.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.core import grants as grants_mod
from bridge.core import token_format
from bridge.core.permissions import Permission, expand

#: prefix of the OAuth scope that stands for a PACS permission (``pacs:view`` ...)
SCOPE_PREFIX = "pacs:"
#: FHIR Coding system of ``purpose_of_use`` (HL7 v3 ActReason)
PURPOSE_OF_USE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: purposes a client may ask for; break-the-glass (BTG) is deliberately not self-service
PURPOSES_OF_USE: frozenset[str] = frozenset({"TREAT", "ETREAT", "HOPERAT", "PATRQT"})
DEFAULT_PURPOSE_OF_USE = "TREAT"
#: break the glass: only in a token that carries a break-glass grant (bridge/breakglass/), which
#: always states it besides the purpose asked for, so every access made with it is recorded as BTG
BREAK_GLASS_PURPOSE = "BTG"


def has_break_glass(grants: Iterable[grants_mod.Grant]) -> bool:
    return any(g.kind == "break-glass" for g in grants)
#: FHIR Coding system the bridge uses for its role names in ``subject_role``
ROLE_SYSTEM = "urn:pacs-sso-bridge:role"


def scope_for(permission: Permission) -> str:
    return SCOPE_PREFIX + permission.value


def scopes_supported() -> list[str]:
    """Every scope a PACS token can carry (for RFC 8414 metadata and the docs)."""
    return sorted(scope_for(p) for p in Permission)


@dataclass(frozen=True)
class Subject:
    """Who the token is about, and how they authenticated (from the Keycloak token)."""

    id: str
    username: str | None = None
    name: str | None = None
    organization: str | None = None
    auth_time: int | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()


#: claims of a Keycloak token that may carry the stable directory id (the realm's "directory id"
#: mapper puts Keycloak's ``LDAP_ID`` user attribute -- objectGUID / entryUUID -- into ``directory_id``)
DIRECTORY_ID_CLAIMS = ("directory_id", "ldap_id", "LDAP_ID")
#: ``sub`` fell back to Keycloak's own id: the account is not federated from the directory
FALLBACK_REASON = "no directory_id claim (user not federated from the directory): sub is Keycloak's user id"


def subject_from_keycloak(kc: Mapping[str, Any]) -> tuple[Subject, str | None]:
    """The PACS subject of a validated Keycloak token (access or ID token), and why ``sub`` is not
    the directory id when it is not (None when it is).

    ``sub`` must be the directory's stable id: role assignments written by the sync are keyed by
    it, and a Keycloak-internal id changes when the realm is rebuilt or the user re-imported.
    Only local Keycloak accounts (break-glass admins) lack it; they fall back to Keycloak's
    ``sub``, and the reason goes to the audit trail.
    """
    directory_id = next((str(kc[c]) for c in DIRECTORY_ID_CLAIMS if kc.get(c)), None)
    amr = kc.get("amr") or ()
    subject = Subject(
        id=directory_id or str(kc["sub"]),
        username=kc.get("preferred_username"),
        name=kc.get("name") or None,
        organization=kc.get("organization") if isinstance(kc.get("organization"), str) else None,
        auth_time=int(kc["auth_time"]) if isinstance(kc.get("auth_time"), int | float) else None,
        acr=str(kc["acr"]) if kc.get("acr") is not None else None,
        amr=tuple(a for a in ([amr] if isinstance(amr, str) else amr) if isinstance(a, str)),
    )
    return subject, None if directory_id else FALLBACK_REASON


@dataclass(frozen=True)
class Grant:
    """What the subject may do in the PACS: the roles held, and one :class:`bridge.core.grants.Grant`
    per role (its permissions, its scope).  ``permissions`` is their union, for the OAuth ``scope``
    and display only: the PACS decides on ``grants``."""

    roles: tuple[str, ...] = ()
    grants: tuple[grants_mod.Grant, ...] = ()
    source: str = "assignments"  # or "keycloak-roles" (fallback), for the audit trail

    @property
    def permissions(self) -> frozenset[Permission]:
        return frozenset(Permission(p) for p in grants_mod.permissions_of(self.grants))

    def narrowed(self, requested_scope: str | None) -> Grant:
        """Only the permissions the client asked for (``scope=pacs:view ...``), in each grant, never
        more than granted; a grant left with no permission is dropped."""
        if not requested_scope:
            return self
        asked = {s[len(SCOPE_PREFIX) :] for s in requested_scope.split() if s.startswith(SCOPE_PREFIX)}
        kept = tuple(n for g in self.grants if (n := g.narrowed(asked)).permissions)
        return Grant(self.roles, kept, self.source)


def role_grant(
    role: str, permissions: Iterable[str | Permission], scope: Mapping[str, Any] | None
) -> grants_mod.Grant | None:
    """One role's grant: its expanded permissions and its scope (an assignment row's, or the policy
    role's).  None when the scope is not one the PACS can apply (an unknown key, a value that is
    not a list of names): the role then allows nothing, never everything."""
    claim = {"kind": "role", "role": role,
             "permissions": sorted(p.value for p in expand(list(permissions))),  # type: ignore[arg-type]
             "scope": {k: v for k, v in (scope or {}).items() if v not in (None, [])}}
    return grants_mod.grant_from_claim(claim)


def grant_from_roles(
    roles: Iterable[tuple[str, Mapping[str, Any] | None]] | Iterable[str],
    role_permissions: Mapping[str, Iterable[str | Permission]],
    source: str = "assignments",
) -> Grant:
    """Roles (each with its scope: ``(role, scope)``, or a bare name for an unscoped role) ->
    one grant per role through the policy's permission map; roles the map does not know grant
    nothing.  The same role held twice with the same scope is one grant."""
    pairs = [(r, None) if isinstance(r, str) else r for r in roles]
    known = [(r, scope) for r, scope in pairs if r in role_permissions]
    out: list[grants_mod.Grant] = []
    for role, scope in known:
        grant = role_grant(role, role_permissions[role], scope)
        if grant is not None and grant not in out:
            out.append(grant)
    out.sort(key=lambda g: (g.role or "", g.description))
    return Grant(tuple(sorted({r for r, _ in known})), tuple(out), source)


@dataclass(frozen=True)
class TokenSettings:
    """The token-shaping part of the configuration."""

    issuer: str
    audience: str
    lifetime_seconds: int = 300
    max_lifetime_seconds: int = 3600
    extra: dict[str, Any] = field(default_factory=dict)


def lifetime(settings: TokenSettings, requested: int | None = None) -> int:
    """The token lifetime: the default, or what was asked for, never above the configured maximum."""
    value = settings.lifetime_seconds if requested is None else int(requested)
    return max(1, min(value, settings.max_lifetime_seconds))


def build(
    settings: TokenSettings,
    subject: Subject,
    grant: Grant,
    client_id: str,
    *,
    requested_lifetime: int | None = None,
    purpose_of_use: str = DEFAULT_PURPOSE_OF_USE,
    now: int | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of one PACS token."""
    if not subject.id:
        raise ValueError("subject.id: a PACS token needs the stable directory id as sub")
    emergency = has_break_glass(grant.grants)
    if purpose_of_use not in PURPOSES_OF_USE and not (emergency and purpose_of_use == BREAK_GLASS_PURPOSE):
        raise ValueError(
            f"purpose_of_use: {purpose_of_use!r} is not one of {', '.join(sorted(PURPOSES_OF_USE))} "
            f"({BREAK_GLASS_PURPOSE} only with a break-glass grant)"
        )
    purposes = [purpose_of_use]
    if emergency and purpose_of_use != BREAK_GLASS_PURPOSE:
        purposes.append(BREAK_GLASS_PURPOSE)
    iat = int(time.time()) if now is None else int(now)
    permissions = sorted(p.value for p in grant.permissions)
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": subject.id,
        "aud": settings.audience,
        "client_id": client_id,
        "iat": iat,
        "nbf": iat,
        "exp": iat + lifetime(settings, requested_lifetime),
        "jti": jti or secrets.token_urlsafe(18),
        "scope": " ".join(SCOPE_PREFIX + p for p in permissions),
        "roles": list(grant.roles),
        "permissions": permissions,
        grants_mod.CLAIM: [g.to_claim() for g in grant.grants],
        "extensions": {
            "ihe_iua": {
                "subject_name": subject.name or subject.username or subject.id,
                "subject_role": [{"system": ROLE_SYSTEM, "code": r} for r in grant.roles],
                "purpose_of_use": [{"system": PURPOSE_OF_USE_SYSTEM, "code": p} for p in purposes],
                **({"subject_organization": subject.organization} if subject.organization else {}),
            }
        },
    }
    if subject.username:
        claims["preferred_username"] = subject.username
    if subject.auth_time is not None:
        claims["auth_time"] = int(subject.auth_time)
    if subject.acr is not None:
        claims["acr"] = subject.acr
    if subject.amr:
        claims["amr"] = list(subject.amr)
    claims.update(settings.extra)
    claims[token_format.CLAIM] = token_format.CURRENT  # after the extras: no setting may change it
    return claims
