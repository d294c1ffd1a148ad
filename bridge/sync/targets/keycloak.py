"""Target: Keycloak roles (realm roles, or client roles of the PACS client) via python-keycloak.

Ownership: the bridge manages only roles carrying the attribute ``managed-by: pacs-bridge`` (set
when it creates them; the demo realm file sets it too).  Assignments of any other role, and any
role IT created by hand in the console, are never read as actual state and never removed.

Users: Keycloak's own LDAP federation imports users (``READ_ONLY``, ``removeInvalidUsersEnabled``
false); the bridge triggers that user sync through the admin API before reading, so that joiners
exist, and finds a directory user's Keycloak account by the ``LDAP_ID`` attribute the federation
stores (objectGUID / entryUUID), not by username: a renamed user keeps their roles.  Why not let
the bridge create users itself: Keycloak must verify passwords against the directory by bind
anyway, which only a federated user does.  (docs/sync.md, "Why Keycloak imports the users".)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from keycloak.exceptions import KeycloakError

from bridge.directory.model import LDAP_ID
from bridge.kcadmin import admin_client
from bridge.policy.model import Role
from bridge.sync.model import ActualState, Change, DesiredState, Leaver
from bridge.sync.targets.base import Target, TargetError

log = logging.getLogger(__name__)

MANAGED_ATTR = "managed-by"
MANAGED_VALUE = "pacs-bridge"
STORAGE_TYPE = "org.keycloak.storage.UserStorageProvider"


def is_managed(role: dict[str, Any]) -> bool:
    return MANAGED_VALUE in ((role.get("attributes") or {}).get(MANAGED_ATTR) or [])


class KeycloakTarget(Target):
    name = "keycloak"

    def __init__(self, url: str, realm: str, admin_username: str, admin_password: str, *,
                 admin_realm: str = "master", ca_file: Path | None = None,
                 mode: Literal["realm", "client"] = "realm", client_id: str = "pacs",
                 trigger_ldap_sync: bool = True, timeout: int = 120):
        self.realm, self.mode, self.client_id = realm, mode, client_id
        self.trigger_ldap_sync = trigger_ldap_sync
        try:
            self.admin = admin_client(url, realm, admin_username, admin_password, admin_realm=admin_realm,
                                      ca_file=ca_file, timeout=timeout)
        except (KeycloakError, OSError) as exc:
            raise TargetError(f"keycloak {url}: cannot log in to the admin API: {exc}") from exc
        self._client_uuid: str | None = None
        self._roles: dict[str, dict[str, Any]] = {}
        self._kc_user: dict[str, str] = {}  # stable id -> Keycloak user id
        self.ldap_sync_results: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ helpers

    @property
    def client_uuid(self) -> str:
        if self._client_uuid is None:
            cid = self.admin.get_client_id(self.client_id)
            if not cid:
                raise TargetError(f"keycloak realm {self.realm}: no client {self.client_id!r}")
            self._client_uuid = cid
        return self._client_uuid

    def _list_roles(self) -> list[dict[str, Any]]:
        if self.mode == "client":
            return list(self.admin.get_client_roles(self.client_uuid, brief_representation=False))
        return list(self.admin.get_realm_roles(brief_representation=False))

    def _members(self, role: str) -> list[dict[str, Any]]:
        query = {"briefRepresentation": False}
        if self.mode == "client":
            return list(self.admin.get_client_role_members(self.client_uuid, role, **query))
        return list(self.admin.get_realm_role_members(role, query=query))

    def _user_id(self, stable_id: str, username: str) -> str:
        """The Keycloak user of a directory user, by LDAP_ID (then username, checked against LDAP_ID)."""
        if stable_id in self._kc_user:
            return self._kc_user[stable_id]
        found = self.admin.get_users({"q": f"{LDAP_ID}:{stable_id}", "briefRepresentation": False})
        found = [u for u in found if _ldap_id(u) == stable_id]
        if not found:
            by_name = self.admin.get_users({"username": username, "exact": True, "briefRepresentation": False})
            found = [u for u in by_name if _ldap_id(u) in (stable_id, None)]
        if not found:
            raise LookupError(f"no Keycloak user for {username} (LDAP_ID {stable_id}); "
                              "not imported by the LDAP federation yet")
        self._kc_user[stable_id] = found[0]["id"]
        return found[0]["id"]

    # ------------------------------------------------------------------ Target

    def prepare(self, *, full: bool) -> None:
        if not self.trigger_ldap_sync:
            return
        action = "triggerFullSync" if full else "triggerChangedUsersSync"
        try:
            comps = self.admin.get_components(query={"type": STORAGE_TYPE})
        except KeycloakError as exc:
            raise TargetError(f"keycloak realm {self.realm}: cannot list user storage: {exc}") from exc
        for comp in comps:
            if comp.get("providerId") != "ldap":
                continue
            try:
                res = self.admin.sync_users(comp["id"], action)
            except KeycloakError as exc:
                raise TargetError(f"keycloak: LDAP {action} of {comp.get('name')} failed: {exc}") from exc
            self.ldap_sync_results.append(res)
            if res.get("ignored"):
                log.info("keycloak LDAP sync %s ignored (another sync holds the lock)", comp.get("name"))

    def read(self, desired: DesiredState) -> ActualState:
        try:
            roles = self._list_roles()
        except KeycloakError as exc:
            raise TargetError(f"keycloak realm {self.realm}: cannot list roles: {exc}") from exc
        managed = {r["name"]: r for r in roles if is_managed(r)}
        foreign = frozenset(r["name"] for r in roles if not is_managed(r) and r["name"] in desired.roles)
        self._roles = managed
        assignments: set[tuple[str, str]] = set()
        usernames: dict[str, str] = {}
        for name in managed:
            try:
                members = self._members(name)
            except KeycloakError as exc:
                raise TargetError(f"keycloak: cannot list members of role {name}: {exc}") from exc
            for m in members:
                sid = _ldap_id(m)
                if sid is None:
                    continue  # a local (non-directory) account: not the sync's business
                self._kc_user[sid] = m["id"]
                usernames[sid] = m.get("username", sid)
                assignments.add((sid, name))
        return ActualState(frozenset(managed), frozenset(assignments), usernames, foreign)

    def create_role(self, role: Role) -> None:
        rep = {"name": role.name, "description": role.description,
               "attributes": {MANAGED_ATTR: [MANAGED_VALUE],
                              "pacs-permissions": sorted(p.value for p in role.permissions),
                              **{f"scope-{k}": v for k, v in role.scope().items()}}}
        if self.mode == "client":
            self.admin.create_client_role(self.client_uuid, rep, skip_exists=True)
            self._roles[role.name] = self.admin.get_client_role(self.client_uuid, role.name)
        else:
            self.admin.create_realm_role(rep, skip_exists=True)
            self._roles[role.name] = self.admin.get_realm_role(role.name)

    def _role_rep(self, name: str) -> dict[str, Any]:
        r = self._roles[name]
        return {"id": r["id"], "name": r["name"]}

    def add(self, change: Change, desired: DesiredState) -> None:
        uid = self._user_id(change.user_id, change.username)
        if self.mode == "client":
            self.admin.assign_client_role(uid, self.client_uuid, [self._role_rep(change.role)])
        else:
            self.admin.assign_realm_roles(uid, [self._role_rep(change.role)])

    def remove(self, change: Change) -> None:
        uid = self._user_id(change.user_id, change.username)
        if self.mode == "client":
            self.admin.delete_client_roles_of_user(uid, self.client_uuid, [self._role_rep(change.role)])
        else:
            self.admin.delete_realm_roles_of_user(uid, [self._role_rep(change.role)])

    def offboard(self, leaver: Leaver) -> None:
        """End the leaver's Keycloak sessions (SSO and refresh tokens die with them)."""
        uid = self._user_id(leaver.user_id, leaver.username)
        try:
            self.admin.user_logout(uid)
        except KeycloakError as exc:
            if getattr(exc, "response_code", None) != 404:
                raise


def _ldap_id(user: dict[str, Any]) -> str | None:
    vals = (user.get("attributes") or {}).get(LDAP_ID) or []
    return str(vals[0]).lower() if vals else None
