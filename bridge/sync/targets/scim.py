"""Target: a PACS provisioned over SCIM 2.0 (RFC 7643/7644).

Mapping: each directory user is a SCIM User with ``externalId`` = the directory's stable id (so a
rename is a PATCH of userName, never a new account); each managed role is one SCIM Group whose
``externalId`` is ``pacs-bridge:role:<name>`` (the bridge's ownership marker: groups without it are
left alone); membership changes are PATCH operations on the group; a leaver's User is set
``active: false``.

Why plain HTTP (bridge/scim_client.py) and not a generated client: the bridge needs five requests,
and keeping them visible here makes the wire format easy to check against RFC 7644 and the PACS's logs.
"""

from __future__ import annotations

from typing import Any

from bridge.policy.model import Role
from bridge.scim_client import ScimClient, ScimError, ScimUnreachable
from bridge.sync.model import ActualState, Change, DesiredState, Leaver
from bridge.sync.targets.base import Target, TargetError

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
MARKER = "pacs-bridge:role:"


class ScimTarget(Target):
    name = "scim"

    def __init__(self, url: str, token: str, *, verify: str | bool = True, timeout: float = 30):
        self.client = ScimClient(url, token, verify=verify, timeout=timeout)
        self._groups: dict[str, str] = {}  # role -> SCIM group id
        self._users: dict[str, str] = {}   # stable id -> SCIM user id

    def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            return self.client.request(method, path, **kw)
        except ScimUnreachable as exc:
            raise TargetError(str(exc)) from exc

    def _all(self, path: str) -> list[dict[str, Any]]:
        try:
            return self.client.all(path)
        except ScimUnreachable as exc:
            raise TargetError(str(exc)) from exc

    def read(self, desired: DesiredState) -> ActualState:
        try:
            users = self._all("/Users")
            groups = self._all("/Groups")
        except ScimError as exc:
            raise TargetError(str(exc)) from exc
        by_scim = {}
        names = {}
        for u in users:
            if u.get("externalId"):
                sid = str(u["externalId"]).lower()
                self._users[sid] = u["id"]
                by_scim[u["id"]] = sid
                names[sid] = u.get("userName", sid)
        managed: set[str] = set()
        foreign: set[str] = set()
        assignments: set[tuple[str, str]] = set()
        for g in groups:
            ext = str(g.get("externalId") or "")
            if not ext.startswith(MARKER):
                if g.get("displayName") in desired.roles:
                    foreign.add(g["displayName"])
                continue
            role = ext[len(MARKER):]
            managed.add(role)
            self._groups[role] = g["id"]
            members = g.get("members")
            if members is None:  # some servers omit members in lists
                members = (self._req("GET", f"/Groups/{g['id']}") or {}).get("members") or []
            for m in members:
                sid = by_scim.get(m.get("value"))
                if sid:
                    assignments.add((sid, role))
        return ActualState(frozenset(managed), frozenset(assignments), names, frozenset(foreign - managed))

    def create_role(self, role: Role) -> None:
        g = self._req("POST", "/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": role.name,
                                                "externalId": MARKER + role.name})
        self._groups[role.name] = g["id"]

    def _ensure_user(self, change: Change, desired: DesiredState) -> str:
        if change.user_id in self._users:
            return self._users[change.user_id]
        u = desired.users[change.user_id]
        body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": u.username, "externalId": u.id,
                                "displayName": u.display_name or u.username, "active": not u.disabled}
        if u.email:
            body["emails"] = [{"value": u.email, "primary": True}]
        created = self._req("POST", "/Users", json=body)
        self._users[u.id] = created["id"]
        return created["id"]

    def _patch_group(self, role: str, op: dict[str, Any]) -> None:
        self._req("PATCH", f"/Groups/{self._groups[role]}", json={"schemas": [PATCH_SCHEMA], "Operations": [op]})

    def add(self, change: Change, desired: DesiredState) -> None:
        uid = self._ensure_user(change, desired)
        self._patch_group(change.role, {"op": "add", "path": "members", "value": [{"value": uid}]})

    def remove(self, change: Change) -> None:
        uid = self._users[change.user_id]
        self._patch_group(change.role, {"op": "remove", "path": f'members[value eq "{uid}"]'})

    def offboard(self, leaver: Leaver) -> None:
        uid = self._users.get(leaver.user_id)
        if uid:
            self._req("PATCH", f"/Users/{uid}", json={"schemas": [PATCH_SCHEMA], "Operations": [
                {"op": "replace", "path": "active", "value": False}]})
