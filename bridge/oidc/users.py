"""Keycloak user id -> stable directory id, for logout tokens (they name Keycloak's ``sub``).

Learnt at login in this process; otherwise asked from Keycloak's admin API (the user's
``LDAP_ID`` attribute), because another worker process may have done the login.
"""

from __future__ import annotations

from bridge.config import Settings
from bridge.directory.model import LDAP_ID
from bridge.http import pinned_session


def directory_id_from_admin_api(settings: Settings, kc_user_id: str, timeout: float = 10.0) -> str | None:
    """The user's LDAP_ID via the admin API, or None (no admin credentials, unknown or local user)."""
    kc = settings.keycloak
    if kc.admin_password is None:
        return None
    http = pinned_session(kc.ca_file)
    token = http.post(
        f"{kc.url}/realms/{kc.admin_realm}/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": "admin-cli", "username": kc.admin_username,
              "password": kc.admin_password.get_secret_value()},
        timeout=timeout,
    )
    if token.status_code != 200:
        return None
    res = http.get(f"{kc.url}/admin/realms/{kc.realm}/users/{kc_user_id}",
                   headers={"Authorization": "Bearer " + token.json()["access_token"]}, timeout=timeout)
    if res.status_code != 200:
        return None
    values = (res.json().get("attributes") or {}).get(LDAP_ID) or []
    return str(values[0]) if values else None
