"""Keycloak user id -> stable directory id, for logout tokens (they name Keycloak's ``sub``).

Learnt at login in this process; otherwise asked from Keycloak's admin API (the user's
``LDAP_ID`` attribute), because another worker process may have done the login.  The admin API
client is the bridge's one python-keycloak client (bridge/kcadmin.py).
"""

from __future__ import annotations

from bridge.config import Settings
from bridge.directory.model import LDAP_ID


def directory_id_from_admin_api(settings: Settings, kc_user_id: str, timeout: float = 10.0) -> str | None:
    """The user's LDAP_ID via the admin API, or None (no admin credentials, refused admin login,
    unknown or local user).  A server that cannot be reached raises: the caller logs it."""
    from keycloak.exceptions import KeycloakAuthenticationError, KeycloakGetError, KeycloakPostError

    from bridge.kcadmin import admin_from_settings

    if settings.keycloak.admin_password is None:
        return None
    try:
        rep = admin_from_settings(settings.keycloak, timeout=int(timeout) or 1).get_user(kc_user_id)
    except (KeycloakAuthenticationError, KeycloakGetError, KeycloakPostError):
        return None
    values = (rep.get("attributes") or {}).get(LDAP_ID) or []
    return str(values[0]) if values else None
