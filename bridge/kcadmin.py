"""The bridge's one Keycloak admin API client: python-keycloak's ``KeycloakAdmin`` built from the
``keycloak`` settings section.

The sync target (roles), the login-event pull and the logout-token user lookup all talk to the
same admin API with the same credentials; building the client here keeps the URL, admin realm,
CA pinning and timeout in one place.  Callers wrap :class:`keycloak.exceptions.KeycloakError` and
``OSError`` into their own area's error, because only they know what the failure means.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keycloak import KeycloakAdmin


class NoAdminCredentials(ValueError):
    """``keycloak.admin_password`` is not set: there is no admin API to talk to."""


def admin_client(url: str, realm: str, admin_username: str, admin_password: str, *,
                 admin_realm: str = "master", ca_file: Path | str | None = None,
                 timeout: int = 60) -> KeycloakAdmin:
    """A ``KeycloakAdmin`` for ``realm`` logged in as ``admin_username`` of ``admin_realm``."""
    from keycloak import KeycloakAdmin

    return KeycloakAdmin(server_url=url.rstrip("/") + "/", username=admin_username, password=admin_password,
                         realm_name=realm, user_realm_name=admin_realm,
                         verify=str(ca_file) if ca_file else True, timeout=timeout)


def admin_from_settings(kc: Any, *, timeout: int = 60) -> KeycloakAdmin:
    """:func:`admin_client` from a :class:`bridge.config` ``keycloak`` section; raises
    :class:`NoAdminCredentials` when ``admin_password`` is unset."""
    if kc.admin_password is None:
        raise NoAdminCredentials("keycloak.admin_password is not set")
    return admin_client(kc.url, kc.realm, kc.admin_username, kc.admin_password.get_secret_value(),
                        admin_realm=kc.admin_realm, ca_file=kc.ca_file, timeout=timeout)
