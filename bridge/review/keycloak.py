"""What Keycloak holds, for the review: every account of the realm (with its ``LDAP_ID``) and the
members of each policy role, through the bridge's one admin client (bridge/kcadmin.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from keycloak.exceptions import KeycloakError

from bridge.directory.model import LDAP_ID
from bridge.errors import UnavailableError
from bridge.review.build import KeycloakAccount, KeycloakFacts


def _ldap_id(user: dict[str, Any]) -> str | None:
    vals = (user.get("attributes") or {}).get(LDAP_ID) or []
    return str(vals[0]).lower() if vals else None


def keycloak_facts(admin: Any, roles: Iterable[str], *, mode: str = "realm", client_id: str = "pacs") -> KeycloakFacts:
    """Accounts and role members; a role the realm does not have is skipped."""
    try:
        users = admin.get_users({"briefRepresentation": False})
        facts = KeycloakFacts(accounts=[
            KeycloakAccount(u["id"], u.get("username", ""), _ldap_id(u), bool(u.get("enabled", True)))
            for u in users if not str(u.get("username", "")).startswith("service-account-")])
        client_uuid = admin.get_client_id(client_id) if mode == "client" else None
        existing = {r["name"] for r in (admin.get_client_roles(client_uuid) if client_uuid
                                        else admin.get_realm_roles())}
        for role in sorted(set(roles) & existing):
            query = {"briefRepresentation": False}
            members = (admin.get_client_role_members(client_uuid, role, **query) if client_uuid
                       else admin.get_realm_role_members(role, query=query))
            facts.role_members[role] = {_ldap_id(m) or f"keycloak:{m['id']}" for m in members}
        return facts
    except (KeycloakError, OSError) as exc:
        raise UnavailableError(f"review: cannot read Keycloak's accounts and role members: {exc}") from exc
