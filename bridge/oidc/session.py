"""The bridge's login session: what is kept in the (signed) Flask session cookie, and when it ends.

The cookie is ``Secure``, ``HttpOnly``, ``SameSite=Lax`` (Lax, not Strict: the redirect back from
Keycloak is a cross-site top-level GET that must carry it).  A session ends when

* it was idle longer than ``bridge.session_idle_minutes``,
* it is older than ``bridge.session_absolute_hours`` (no sliding past that),
* its subject was logged out: a logout (or the sync) raised the subject's revocation watermark,
  or a back-channel logout named its Keycloak ``sid`` (both in the database, so every worker
  process sees them).

Only who the user is, how they authenticated and the ID token (the ``id_token_hint`` of
RP-initiated logout) are kept.  Never a password or OTP, and never roles: what a PACS token grants
is read from the assignment store when it is issued, so a role removed after the login is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

KEY = "bridge_login"
PENDING = "bridge_pending"


@dataclass
class Login:
    sub: str  # the PACS subject: the directory id (see bridge.tokens.claims.subject_from_keycloak)
    kc_sub: str  # Keycloak's user id (what logout tokens name)
    sid: str | None
    username: str | None
    name: str | None
    auth_time: int | None
    acr: str | None
    amr: list[str]
    id_token: str
    login_at: float
    last_seen: float
    fallback: str | None = None  # why sub is not the directory id, if it is not

    def keycloak_claims(self) -> dict[str, Any]:
        """The claims the token service reads (subject, MFA), rebuilt from the session; no roles."""
        claims: dict[str, Any] = {
            "sub": self.kc_sub,
            "preferred_username": self.username,
            "name": self.name,
            "acr": self.acr,
            "amr": list(self.amr),
        }
        if self.fallback is None:
            claims["directory_id"] = self.sub
        if self.auth_time is not None:
            claims["auth_time"] = self.auth_time
        return claims


class SessionEnds(Protocol):
    """Where ended Keycloak sessions are kept (:class:`bridge.oidc.state.SqlEndedSessions` in the
    app: shared by every worker; an in-memory double in tests/doubles.py)."""

    def end(self, sid: str) -> None: ...

    def ended(self, sid: str | None) -> bool: ...


@dataclass(frozen=True)
class Timeouts:
    idle_seconds: float
    absolute_seconds: float


def load(store: MutableMapping[str, Any]) -> Login | None:
    raw = store.get(KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return Login(**raw)
    except TypeError:  # an older cookie layout: start over
        store.pop(KEY, None)
        return None


def save(store: MutableMapping[str, Any], login: Login) -> None:
    store[KEY] = asdict(login)


def current(
    store: MutableMapping[str, Any],
    timeouts: Timeouts,
    ended: SessionEnds,
    subject_watermark: Callable[[str], int | None],
    now: float | None = None,
) -> tuple[Login | None, str | None]:
    """The live login of this session (touching its idle clock), or (None, why it ended)."""
    login = load(store)
    if login is None:
        return None, None
    now = time.time() if now is None else now
    why = None
    if now - login.last_seen > timeouts.idle_seconds:
        why = "idle timeout"
    elif now - login.login_at > timeouts.absolute_seconds:
        why = "absolute timeout"
    elif ended.ended(login.sid):
        why = "logged out (Keycloak session ended)"
    else:
        mark = subject_watermark(login.sub)
        if mark is not None and login.login_at < mark + 1:  # whole seconds: err on the closed side
            why = "logged out or access changed (subject revoked)"
    if why:
        store.pop(KEY, None)
        return None, why
    login.last_seen = now
    save(store, login)
    return login, None


