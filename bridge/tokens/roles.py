"""Role -> PACS permissions (and the policy's role scopes) for the token service: the YAML policy's
roles (``sync.policy_file``),
or, when no policy file is configured, a small built-in map of the demo hospital's Keycloak realm
roles (keycloak-realm/hospital-realm.json) so that a fresh install can still issue tokens."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bridge.core.permissions import Permission as P

DEFAULT_ROLE_PERMISSIONS: Mapping[str, frozenset[P]] = {
    "radiologist": frozenset({P.VIEW, P.DOWNLOAD, P.SEND, P.SHARE, P.ANONYMIZE, P.QUERY_RETRIEVE}),
    "technologist": frozenset({P.VIEW, P.UPLOAD, P.MODIFY, P.SEND}),
    "referring-physician": frozenset({P.VIEW}),
    "pacs-admin": frozenset({P.VIEW, P.DELETE, P.SETTINGS, P.ADMIN}),
    "auditor": frozenset({P.AUDIT_LOGS}),
}


def role_scopes(policy_file: str | Path | None = None) -> Mapping[str, Mapping[str, list[str]]]:
    """Role -> its scope in the policy (only restricting keys): the Keycloak-role fallback's scopes.
    The built-in map's roles are unscoped."""
    if policy_file is None:
        return {}
    from bridge.policy.loader import load_policy

    return {name: role.scope() for name, role in load_policy(policy_file).roles.items()}


def role_permissions(policy_file: str | Path | None = None) -> Mapping[str, frozenset[P]]:
    """The role map in force: the policy file's roles (effective permissions), else the default."""
    if policy_file is None:
        return DEFAULT_ROLE_PERMISSIONS
    from bridge.policy.loader import load_policy

    policy = load_policy(policy_file)
    return {name: role.effective_permissions for name, role in policy.roles.items()}
