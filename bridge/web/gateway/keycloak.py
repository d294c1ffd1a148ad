"""The gateway's server-to-server calls to Keycloak: refresh a session, end a session.

Both go to the endpoints of the realm's discovery document (from the Authlib client, which has
loaded it already), authenticated as the bridge's confidential client, over a session that trusts
exactly ``keycloak.ca_file`` (:func:`bridge.http.pinned_session`).
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from bridge.http import pinned_session

log = logging.getLogger(__name__)


class KeycloakEnded(Exception):
    """Keycloak refused the refresh token: its session is over (logout, disabled user, SSO max)."""


class KeycloakSessions:
    def __init__(self, oauth_client: Any, client_id: str, client_secret: str, ca_file: str | None,
                 timeout: float = 10.0):
        self.oauth_client = oauth_client  # Authlib's registered client: its server metadata
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = pinned_session(ca_file)
        self.timeout = timeout

    def _metadata(self) -> dict[str, Any]:
        return self.oauth_client.load_server_metadata()  # type: ignore[no-any-return]

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """New tokens for a refresh token (Keycloak checks its session is alive); raises
        :class:`KeycloakEnded` when Keycloak says no, ``requests.RequestException`` when unreachable."""
        res = self.http.post(self._metadata()["token_endpoint"], timeout=self.timeout, data={
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": self.client_id, "client_secret": self.client_secret})
        if res.status_code in (400, 401):
            raise KeycloakEnded(str(res.json().get("error", res.status_code)) if res.content else str(res.status_code))
        res.raise_for_status()
        return res.json()  # type: ignore[no-any-return]

    def end(self, refresh_token: str | None) -> bool:
        """End the Keycloak session the refresh token belongs to (an idle logout must not be undone
        by a live SSO session).  Best effort: False when it could not be done (logged)."""
        if not refresh_token:
            return False
        try:
            res = self.http.post(self._metadata()["end_session_endpoint"], timeout=self.timeout, data={
                "refresh_token": refresh_token, "client_id": self.client_id, "client_secret": self.client_secret})
        except requests.RequestException as exc:
            log.warning("gateway: ending the Keycloak session failed: %s", type(exc).__name__)
            return False
        return res.status_code in (200, 204) or res.status_code == 400  # 400: already gone
