"""Changes made in Keycloak's admin console (or admin API), pulled into the audit trail.

Why: the bridge's sync owns the PACS roles in Keycloak, but an administrator can give a role by
hand in the console, outside the policy.  Keycloak records such changes as *admin events* (the
realm's ``adminEventsEnabled``; ``adminEventsDetailsEnabled`` adds the JSON representation of
what was sent, e.g. the roles of a role mapping, keycloak-realm/hospital-realm.json) and, as
for logins, offers no syslog/ATNA output.  This job reads them through the admin API
(``GET /admin/realms/{realm}/admin-events``, python-keycloak's ``get_admin_events``, ``dateFrom``
in epoch milliseconds, oldest first) with the machinery of the login pull
(bridge/audit/keycloak_events.py: own cursor ``keycloak-admin-events:<realm>``, exactly once by
the Keycloak event id, an unusable event recorded as ``audit.input_rejected``, a database lease).

=========================================================  ============================================
Keycloak admin event (resourceType, operationType)         audit event (codes: bridge/core/audit_codes.py)
=========================================================  ============================================
REALM_ROLE_MAPPING / CLIENT_ROLE_MAPPING, CREATE           role.assigned (110113 / 110137)
REALM_ROLE_MAPPING / CLIENT_ROLE_MAPPING, DELETE           role.removed (110113 / 110137)
USER, GROUP_MEMBERSHIP, CREDENTIAL, USER_SESSION, ...      user.changed (110113 / 110137)
REALM_ROLE / CLIENT_ROLE (role definitions, composites)    config.role_mapping_changed (110113 / 110136)
anything else (realm, clients, flows, federation ...)      config.changed (110113 / 110129)
=========================================================  ============================================

Who: the admin (``authDetails``): a user of the bridge's realm as everywhere in the trail
(``<directory id>@<bridge issuer>``), an admin of another realm (``master``) as
``<Keycloak user id>@<Keycloak URL>/realms/<realm>``, the issuer of that admin's tokens; the
username, client and address beside it.  On whom: the user of the resource path
(``users/{id}/...``) by directory id and username, the group, and the roles named in the
representation.  ``details.by_bridge_sync`` tells the bridge's own changes (its admin account,
through its admin client: the one the sync uses, bridge/kcadmin.py) from changes made by hand;
it is ``null`` when the bridge could not look up its own account.  Give the bridge an admin
account of its own: with a shared account only the client (``admin-cli`` vs the console's
``security-admin-console``) still tells them apart.

Secrets: a representation can carry credentials (a user created with a password, a client with
its secret).  Keycloak 26 strips most of them itself; the bridge does not rely on that and drops
every ``credentials``, ``secret``, ``value`` and secret-looking key before anything is stored,
and keeps at most :data:`MAX_REPRESENTATION` characters of the rest.  A representation that is
not JSON is never stored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.audit.keycloak_events import (
    EVENT_ID_NAMESPACE,
    PAGE_SIZE,
    KcUser,
    PullReport,
    bridge_issuer,
    kc_id,
    oldest_first,
    pull_pages,
    rejected_event,
)
from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind, Outcome

log = logging.getLogger(__name__)

LEASE = "audit-keycloak-admin-events"
SOURCE = "keycloak-admin"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "ACTION"})
ROLE_MAPPING_TYPES = frozenset({"REALM_ROLE_MAPPING", "CLIENT_ROLE_MAPPING"})
#: resource types about one user account (its attributes, credentials, sessions, memberships)
USER_TYPES = frozenset({"USER", "GROUP_MEMBERSHIP", "CREDENTIAL", "USER_SESSION", "USER_LOGIN_FAILURE",
                        "ORGANIZATION_MEMBERSHIP"})
ROLE_TYPES = frozenset({"REALM_ROLE", "CLIENT_ROLE"})
#: keys dropped from a stored representation, at any depth (besides every secret-looking key)
DROPPED_KEYS = frozenset({"credentials", "secret", "value", "secretdata", "credentialdata", "password"})
MAX_REPRESENTATION = 4000
_BY = {True: " by the bridge's sync", False: " by hand (not the bridge's sync)",
       None: " (the bridge's own admin account is unknown)"}
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


@dataclass(frozen=True)
class BridgeIdentity:
    """The bridge's own admin account: the Keycloak user id and the internal id (UUID) of the
    client it logs in with, as admin events name them in ``authDetails``."""

    user_id: str | None
    client_uuid: str | None = None


@dataclass
class Lookups:
    """What the mapping needs resolved through the admin API (filled by the pull, cached per pull)."""

    #: realm id (UUID) -> realm name
    realm_names: dict[str, str] = field(default_factory=dict)
    #: client id (UUID) -> clientId of the admin realm's clients (``admin-cli``)
    client_names: dict[str, str] = field(default_factory=dict)
    bridge: BridgeIdentity | None = None
    #: Keycloak user id -> user (the admin, the target); None: not found
    users: dict[str, KcUser | None] = field(default_factory=dict)


class AdminEventSource(Protocol):
    """Keycloak's admin API, as far as this pull needs it (a fake in unit tests)."""

    def admin_events(self, date_from_ms: int, first: int, max_results: int) -> list[dict[str, Any]]:
        """Admin events of the realm at or after ``date_from_ms``, oldest first."""

    def user(self, user_id: str) -> KcUser | None:
        """A user of the bridge's realm, None if it no longer exists."""

    def realm_user(self, realm: str, user_id: str) -> KcUser | None:
        """A user of another realm (the admin realm), None if unknown."""

    def lookups(self) -> Lookups:
        """Realm and client names and the bridge's own identity (what could be found)."""


def admin_audit_event_id(realm: str, kc_event_id: str) -> str:
    """The audit id of an admin event (a name space apart from the login events' ids)."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"keycloak-admin:{realm}:{kc_event_id}"))


def classify(operation: str, resource_type: str) -> AuditEventType:
    if resource_type in ROLE_MAPPING_TYPES:
        return {"CREATE": AuditEventType.ROLE_ASSIGNED,
                "DELETE": AuditEventType.ROLE_REMOVED}.get(operation, AuditEventType.USER_CHANGED)
    if resource_type in USER_TYPES:
        return AuditEventType.USER_CHANGED
    if resource_type in ROLE_TYPES:
        return AuditEventType.ROLE_MAPPING_CHANGED
    return AuditEventType.CONFIG_CHANGED


# ---------------------------------------------------------------------------- representation


def _strip(value: Any, depth: int = 0) -> Any:
    if depth > ev.MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, Mapping):
        return {str(k): _strip(v, depth + 1) for k, v in value.items()
                if str(k).lower() not in DROPPED_KEYS and not ev.is_secret_key(str(k))}
    if isinstance(value, list):
        return [_strip(v, depth + 1) for v in value]
    return value


def parse_representation(raw: Any) -> tuple[Any, str | None]:
    """(the representation as JSON data, or None; a note when it was not usable).  Never the
    raw text: what cannot be parsed cannot be cleaned of credentials."""
    if raw is None or raw == "":
        return None, None
    if not isinstance(raw, str):
        return None, f"representation: not a string but {type(raw).__name__}"
    try:
        return json.loads(raw), None
    except ValueError:
        return None, f"representation: not JSON ({len(raw)} characters, not stored)"


def stored_representation(data: Any) -> Any:
    """``data`` without credentials, secrets and values, cut to :data:`MAX_REPRESENTATION`
    characters (then only its keys are kept)."""
    clean = _strip(data)
    text = json.dumps(clean, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) <= MAX_REPRESENTATION:
        return clean
    keys = sorted(clean)[:50] if isinstance(clean, dict) else None
    return {"truncated": True, "characters": len(text), **({"keys": keys} if keys is not None else {})}


def _role_names(resource_type: str, data: Any) -> list[str]:
    if resource_type in ROLE_MAPPING_TYPES and isinstance(data, list):
        items = data
    elif resource_type in ROLE_TYPES and isinstance(data, Mapping):
        items = [data]
    else:
        return []
    return [str(r["name"]) for r in items[:100] if isinstance(r, Mapping) and isinstance(r.get("name"), str)]


# ---------------------------------------------------------------------------- mapping


def _check(kc_event: Any) -> None:
    """Raise for the fields without which the event cannot be recorded as such."""
    if not isinstance(kc_event, Mapping):
        raise TypeError(f"not a JSON object but {type(kc_event).__name__}")
    t = kc_event.get("time")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < 2**53:
        raise ValueError("time: not epoch milliseconds")
    if kc_event.get("operationType") not in OPERATIONS:
        raise ValueError(f"operationType: not one of {', '.join(sorted(OPERATIONS))}")
    rtype = kc_event.get("resourceType")
    if not isinstance(rtype, str) or not _RESOURCE_TYPE.fullmatch(rtype):
        raise ValueError("resourceType: not a Keycloak resource type name")
    for name in ("authDetails", "details"):
        if not isinstance(kc_event.get(name) or {}, Mapping):
            raise ValueError(f"{name}: not a JSON object")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def path_ids(resource_path: str | None) -> dict[str, str]:
    """``users/{id}/groups/{gid}`` -> {"users": id, "groups": gid}: the ids after each
    collection name of a resource path."""
    parts = (resource_path or "").split("/")
    return {parts[i]: parts[i + 1] for i in range(0, len(parts) - 1, 1)
            if parts[i] in ("users", "groups", "clients", "roles", "roles-by-id") and parts[i + 1]}


def by_bridge_sync(auth: Mapping[str, Any], bridge: BridgeIdentity | None) -> bool | None:
    """True when the change was made with the bridge's own admin account through its client;
    None when the bridge's account is unknown."""
    if bridge is None or not bridge.user_id:
        return None
    if auth.get("userId") != bridge.user_id:
        return False
    return bridge.client_uuid is None or auth.get("clientId") == bridge.client_uuid


def to_audit_event(kc_event: Mapping[str, Any], *, realm: str, issuer: str, keycloak_url: str,
                   lookups: Lookups) -> ev.AuditEvent:
    """One Keycloak admin event as an audit event (raises for an event it cannot use)."""
    _check(kc_event)
    op, rtype = str(kc_event["operationType"]), str(kc_event["resourceType"])
    auth: Mapping[str, Any] = kc_event.get("authDetails") or {}
    kc_details: Mapping[str, Any] = kc_event.get("details") or {}
    path = _str(kc_event.get("resourcePath"))
    data, note = parse_representation(kc_event.get("representation"))

    # who
    admin_id, auth_realm_id = _str(auth.get("userId")), _str(auth.get("realmId"))
    auth_realm = lookups.realm_names.get(auth_realm_id or "", auth_realm_id)
    admin = lookups.users.get(admin_id) if admin_id else None
    if admin_id and auth_realm == realm and admin and admin.directory_id:
        actor_id: str | None = f"{admin.directory_id}@{issuer}"
    elif admin_id:
        actor_id = f"{admin_id}@{keycloak_url.rstrip('/')}/realms/{auth_realm or 'unknown'}"
    else:
        actor_id = None
    client_uuid = _str(auth.get("clientId"))
    actor = ev.Actor(user_id=actor_id, username=admin.username if admin else None,
                     client_id=lookups.client_names.get(client_uuid or "", client_uuid),
                     network_address=_str(auth.get("ipAddress")))

    # on whom / what
    ids = path_ids(path)
    objects: list[ev.ParticipantObject] = []
    target_id = ids.get("users")
    details: dict[str, Any] = {
        "source": SOURCE, "realm": realm, "keycloak_event_id": kc_event.get("id"),
        "operation": op, "resource_type": rtype, "resource_path": path,
        "by_bridge_sync": by_bridge_sync(auth, lookups.bridge),
        "admin": {"realm": auth_realm, "user_id": admin_id, "client_id": client_uuid},
    }
    if target_id:
        target = lookups.users.get(target_id)
        username = (target.username if target else None) or _str(kc_details.get("username")) \
            or (_str(data.get("username")) if isinstance(data, Mapping) and rtype == "USER" else None)
        subject = (target.directory_id if target else None) or target_id
        objects.append(ev.user(subject, username))
        details["target_keycloak_user_id"] = target_id
        if target is None or not target.directory_id:
            details["subject_source"] = "keycloak user id (no directory id)"
    if ids.get("groups"):
        name = None
        if isinstance(data, Mapping) and rtype in ("GROUP", "GROUP_MEMBERSHIP"):
            name = _str(data.get("path")) or _str(data.get("name"))
        objects.append(ev.ParticipantObject(ObjectKind.GROUP, ids["groups"], name))
    roles = _role_names(rtype, data)
    objects.extend(ev.role(r) for r in roles)
    if roles:
        details["roles"] = roles
    if rtype == "CLIENT_ROLE_MAPPING" and ids.get("clients"):
        details["role_client_id"] = ids["clients"]
    if not objects:
        objects.append(ev.ParticipantObject(ObjectKind.CONFIG, path or rtype, rtype))
    if data is not None:
        details["representation"] = stored_representation(data)
    if note:
        details["representation_note"] = note
    extra = _strip(dict(kc_details))
    if extra:
        details["keycloak_details"] = extra
    error = _str(kc_event.get("error"))
    if error:
        details["error"] = error
    return ev.AuditEvent(
        type=classify(op, rtype), outcome=Outcome.MINOR_FAILURE if error else Outcome.SUCCESS, actor=actor,
        objects=tuple(objects), details=details,
        description=f"Keycloak admin {op} {rtype} in realm {realm}" + _BY[details["by_bridge_sync"]],
        time=dt.datetime.fromtimestamp(int(kc_event["time"]) / 1000, dt.UTC),
        event_id=admin_audit_event_id(realm, kc_id(kc_event)))


def rejected_admin_event(e: Any, exc: Exception, *, realm: str) -> ev.AuditEvent:
    """The audit.input_rejected record of an admin event: its representation is cleaned (or
    dropped) first, so a credential in an odd event is not stored either."""
    if isinstance(e, Mapping):
        data, note = parse_representation(e.get("representation"))
        e = {**e, "representation": stored_representation(data) if data is not None else note}
        if isinstance(e.get("details"), Mapping):
            e["details"] = _strip(dict(e["details"]))
    return rejected_event(e, exc, realm=realm, source=SOURCE, event_id=admin_audit_event_id)


# ---------------------------------------------------------------------------- the pull


def _resolve_users(e: Any, source: AdminEventSource, lookups: Lookups, realm: str) -> None:
    """Look up (once per pull) the admin and the target user of an event; a failure leaves the
    event with Keycloak ids only."""
    if not isinstance(e, Mapping):
        return
    auth = e.get("authDetails") if isinstance(e.get("authDetails"), Mapping) else {}
    wanted: list[tuple[str, str | None]] = []
    if _str(auth.get("userId")):
        realm_id = _str(auth.get("realmId"))
        wanted.append((auth["userId"], lookups.realm_names.get(realm_id or "", realm_id)))
    target = path_ids(_str(e.get("resourcePath"))).get("users")
    if target:
        wanted.append((target, realm))
    for uid, in_realm in wanted:
        if uid in lookups.users or not in_realm:
            continue
        try:
            lookups.users[uid] = source.user(uid) if in_realm == realm else source.realm_user(in_realm, uid)
        except Exception as exc:
            log.warning("keycloak admin events: looking up user %s failed (%s)", ev.escape_unsafe(uid)[:64],
                        type(exc).__name__)
            lookups.users[uid] = None


def pull(store: AuditStore, source: AdminEventSource, *, realm: str, issuer: str, keycloak_url: str,
         page_size: int = PAGE_SIZE) -> PullReport:
    """Record every admin event of ``realm`` newer than the cursor."""
    lookups = source.lookups()

    def map_event(e: Any) -> ev.AuditEvent:
        _resolve_users(e, source, lookups, realm)
        return to_audit_event(e, realm=realm, issuer=issuer, keycloak_url=keycloak_url, lookups=lookups)

    return pull_pages(store, cursor=f"keycloak-admin-events:{realm}", what="admin events", page_size=page_size,
                      fetch=source.admin_events, map_event=map_event,
                      reject=lambda e, exc: rejected_admin_event(e, exc, realm=realm))


# ---------------------------------------------------------------------------- Keycloak


class AdminEventApiSource:
    """:class:`AdminEventSource` over python-keycloak (the bridge's one admin client)."""

    def __init__(self, admin: Any, *, realm: str, admin_realm: str, admin_username: str,
                 admin_client: str = "admin-cli"):
        from bridge.audit.keycloak_events import AdminApiSource

        self.admin = admin
        self.realm, self.admin_realm = realm, admin_realm
        self.admin_username, self.admin_client = admin_username, admin_client
        self._users = AdminApiSource(admin)

    @classmethod
    def from_settings(cls, settings: Any) -> AdminEventApiSource:
        from bridge.audit.keycloak_events import events_admin

        kc = settings.keycloak
        return cls(events_admin(settings, "admin events"), realm=kc.realm, admin_realm=kc.admin_realm,
                   admin_username=kc.admin_username)

    def admin_events(self, date_from_ms: int, first: int, max_results: int) -> list[dict[str, Any]]:
        found = self.admin.get_admin_events({"dateFrom": str(date_from_ms), "direction": "asc", "first": first,
                                             "max": max_results})
        return oldest_first(found)

    def user(self, user_id: str) -> KcUser | None:
        return self._users.user(user_id)

    def _get(self, path: str, **params: Any) -> Any:
        res = self.admin.connection.raw_get(path, **params)
        return res.json() if res.status_code == 200 else None

    def realm_user(self, realm: str, user_id: str) -> KcUser | None:
        rep = self._get(f"admin/realms/{realm}/users/{user_id}")
        return KcUser(directory_id=None, username=rep.get("username")) if isinstance(rep, dict) else None

    def lookups(self) -> Lookups:
        """Names of the two realms, of the admin realm's admin client, and the bridge's own account.
        Each lookup may fail (an account without view rights on its own realm): the events are
        then recorded with ids, and ``by_bridge_sync`` is null."""
        out = Lookups()
        for name in {self.realm, self.admin_realm}:
            rep = self._safe(lambda n=name: self._get(f"admin/realms/{n}"))
            if isinstance(rep, dict) and rep.get("id"):
                out.realm_names[str(rep["id"])] = name
        clients = self._safe(lambda: self._get(f"admin/realms/{self.admin_realm}/clients",
                                                clientId=self.admin_client))
        client_uuid = None
        if isinstance(clients, list) and clients and isinstance(clients[0], dict):
            client_uuid = clients[0].get("id")
            out.client_names[str(client_uuid)] = self.admin_client
        users = self._safe(lambda: self._get(f"admin/realms/{self.admin_realm}/users",
                                              username=self.admin_username, exact="true"))
        me = next((u for u in users or () if isinstance(u, dict)
                   and str(u.get("username", "")).lower() == self.admin_username.lower()), None)
        if me:
            out.bridge = BridgeIdentity(user_id=me.get("id"), client_uuid=client_uuid)
            out.users[str(me.get("id"))] = KcUser(directory_id=None, username=me.get("username"))
        else:
            log.warning("keycloak admin events: the bridge's own admin account %r was not found in realm %s; "
                        "by_bridge_sync stays unknown", self.admin_username, self.admin_realm)
        return out

    @staticmethod
    def _safe(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log.warning("keycloak admin events: lookup failed (%s)", type(exc).__name__)
            return None


def pull_from_settings(
    settings: Any, store: AuditStore,
    source_factory: Callable[[Any], AdminEventSource] = AdminEventApiSource.from_settings,
) -> PullReport | None:
    """One pull as configured, under its database lease; None when another replica is pulling."""
    from bridge.audit.keycloak_events import pull_under_lease

    return pull_under_lease(store, LEASE, "keycloak admin events", lambda: pull(
        store, source_factory(settings), realm=settings.keycloak.realm, issuer=bridge_issuer(settings),
        keycloak_url=settings.keycloak.url))
