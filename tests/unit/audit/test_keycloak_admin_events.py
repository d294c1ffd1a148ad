"""Keycloak admin events -> audit events: the mapping on events recorded from Keycloak 26.5 (the
dev stack: a user-storage sync, a realm role given and taken by hand, a local user created, its
password reset, a group created and joined), odd fields, credentials in representations, and
the pull (cursor, exactly once, rejected events).

The event source is a fake here; tests/integration/audit/test_keycloak_admin_console.py pulls
from the real Keycloak."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.audit import jobs
from bridge.audit import keycloak_admin_events as kae
from bridge.audit import keycloak_events as kce
from bridge.config import load_config
from bridge.core.audit_codes import AuditEventType, ObjectKind, Outcome
from bridge.kek import KeyEncryptor
from bridge.store import db
from pacs_devstack import realm

RECORDED: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "keycloak_admin_events.json").read_text())
SYNC, USER_UPDATE, ROLE_GIVEN, USER_CREATED, PASSWORD_RESET, GROUP_CREATED, GROUP_JOINED, ROLE_TAKEN = RECORDED
ISSUER = "https://bridge.hospital.test"
KC_URL = "https://kc.hospital.test"
REALM = "hospital"
MASTER_ID, HOSPITAL_ID = ROLE_GIVEN["authDetails"]["realmId"], ROLE_GIVEN["realmId"]
ADMIN_CLI = ROLE_GIVEN["authDetails"]["clientId"]
CONSOLE = "0b0c0d0e-1111-4222-8333-444455556666"
ADMIN = ROLE_GIVEN["authDetails"]["userId"]
BRIDGE_ACCOUNT = "7e57b41d-9e00-4c4c-8a8a-b41d9e007e57"
OMAR = ROLE_GIVEN["resourcePath"].split("/")[1]
LOCAL = USER_CREATED["resourcePath"].split("/")[1]
USERS = {
    ADMIN: kce.KcUser(None, "admin"),
    BRIDGE_ACCOUNT: kce.KcUser(None, "pacs-bridge"),
    OMAR: kce.KcUser("05594a58-7ef8-1041-999f-63e0e93adeda", "er.omar"),
}
SECRET = "S3cret-Passw0rd!"
TOTP_SEED = "JBSWY3DPEHPK3PXPJBSWY3DP"


def lookups(bridge: str | None = BRIDGE_ACCOUNT, client: str | None = ADMIN_CLI) -> kae.Lookups:
    return kae.Lookups(realm_names={MASTER_ID: "master", HOSPITAL_ID: REALM}, client_names={ADMIN_CLI: "admin-cli"},
                       bridge=kae.BridgeIdentity(bridge, client) if bridge else None, users=dict(USERS))


def mapped(e: dict[str, Any], **kw: Any) -> Any:
    return kae.to_audit_event(e, realm=REALM, issuer=ISSUER, keycloak_url=KC_URL, lookups=kw.pop("lk", lookups()))


def dump(event: Any) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False)


# ---------------------------------------------------------------------------- mapping


def test_a_role_given_by_hand_names_the_admin_the_user_and_the_role() -> None:
    a = mapped(ROLE_GIVEN)
    assert a.type == AuditEventType.ROLE_ASSIGNED and a.outcome == Outcome.SUCCESS
    assert a.actor.user_id == f"{ADMIN}@{KC_URL}/realms/master"  # the issuer of the admin's tokens
    assert (a.actor.username, a.actor.client_id, a.actor.network_address) == ("admin", "admin-cli", "127.0.0.1")
    assert a.first(ObjectKind.USER) == USERS[OMAR].directory_id  # the person, by directory id
    assert [o.name for o in a.objects if o.kind == ObjectKind.USER] == ["er.omar"]
    assert [o.id for o in a.objects if o.kind == ObjectKind.ROLE] == ["radiologist"]
    d = a.details
    assert d["by_bridge_sync"] is False and "by hand" in a.description
    assert (d["source"], d["operation"], d["resource_type"], d["roles"]) == (
        "keycloak-admin", "CREATE", "REALM_ROLE_MAPPING", ["radiologist"])
    assert d["target_keycloak_user_id"] == OMAR and d["admin"]["realm"] == "master"
    assert d["representation"][0]["name"] == "radiologist"
    assert a.event_id == kae.admin_audit_event_id(REALM, ROLE_GIVEN["id"])
    assert a.event_id != kce.audit_event_id(REALM, ROLE_GIVEN["id"])  # never collides with a login event
    assert a.time.timestamp() * 1000 == pytest.approx(ROLE_GIVEN["time"])


def test_a_role_taken_is_role_removed() -> None:
    assert mapped(ROLE_TAKEN).type == AuditEventType.ROLE_REMOVED


def test_the_bridges_own_change_is_flagged_as_such() -> None:
    by_bridge = copy.deepcopy(ROLE_GIVEN)
    by_bridge["authDetails"]["userId"] = BRIDGE_ACCOUNT
    a = mapped(by_bridge)
    assert a.details["by_bridge_sync"] is True and a.actor.username == "pacs-bridge"
    # the bridge's account used through the console by a person is not the sync
    by_bridge["authDetails"]["clientId"] = CONSOLE
    assert mapped(by_bridge).details["by_bridge_sync"] is False
    # the bridge's own account unknown: said so, never guessed
    unknown = mapped(ROLE_GIVEN, lk=lookups(bridge=None))
    assert unknown.details["by_bridge_sync"] is None and "unknown" in unknown.description


def test_an_admin_of_the_bridges_realm_is_named_by_directory_id() -> None:
    e = copy.deepcopy(ROLE_GIVEN)
    e["authDetails"] = {**e["authDetails"], "realmId": HOSPITAL_ID, "userId": OMAR}
    assert mapped(e).actor.user_id == f"{USERS[OMAR].directory_id}@{ISSUER}"


@pytest.mark.parametrize("event, kind", [
    (SYNC, AuditEventType.CONFIG_CHANGED), (USER_UPDATE, AuditEventType.USER_CHANGED),
    (USER_CREATED, AuditEventType.USER_CHANGED), (PASSWORD_RESET, AuditEventType.USER_CHANGED),
    (GROUP_CREATED, AuditEventType.CONFIG_CHANGED), (GROUP_JOINED, AuditEventType.USER_CHANGED),
])
def test_other_admin_events(event: dict[str, Any], kind: AuditEventType) -> None:
    a = mapped(event)
    assert a.type == kind and a.objects and a.details["operation"] == event["operationType"]


def test_group_membership_names_user_and_group() -> None:
    a = mapped(GROUP_JOINED)
    user = next(o for o in a.objects if o.kind == ObjectKind.USER)
    group = next(o for o in a.objects if o.kind == ObjectKind.GROUP)
    assert (user.id, user.name) == (LOCAL, "zz.local")  # a local account: Keycloak id, username from details
    assert a.details["subject_source"].startswith("keycloak user id")
    assert (group.id, group.name) == (GROUP_JOINED["resourcePath"].split("/")[3], "/zz-group")


def test_client_role_mapping_and_role_definition() -> None:
    e = copy.deepcopy(ROLE_GIVEN)
    e.update(resourceType="CLIENT_ROLE_MAPPING", resourcePath=f"users/{OMAR}/role-mappings/clients/c-uuid",
             representation=json.dumps([{"name": "pacs:view", "clientRole": True, "containerId": "c-uuid"}]))
    a = mapped(e)
    assert a.type == AuditEventType.ROLE_ASSIGNED and a.details["roles"] == ["pacs:view"]
    assert a.details["role_client_id"] == "c-uuid"
    role = copy.deepcopy(ROLE_GIVEN)
    role.update(resourceType="REALM_ROLE", operationType="UPDATE", resourcePath="roles/radiologist",
                representation=json.dumps({"name": "radiologist", "composite": True}))
    assert mapped(role).type == AuditEventType.ROLE_MAPPING_CHANGED


def test_an_error_event_is_a_failure() -> None:
    e = {**ROLE_GIVEN, "error": "unknown_error"}
    a = mapped(e)
    assert a.outcome == Outcome.MINOR_FAILURE and a.details["error"] == "unknown_error"


# ---------------------------------------------------------------------------- secrets


def _with_credentials(e: dict[str, Any]) -> dict[str, Any]:
    rep = {"username": "zz.local", "enabled": True, "credentials": [
        {"type": "password", "value": SECRET, "temporary": False},
        {"type": "otp", "secretData": json.dumps({"value": TOTP_SEED}), "credentialData": "{}"}],
        "attributes": {"note": ["kept"]}}
    return {**e, "representation": json.dumps(rep)}


def test_a_credential_in_a_representation_is_never_stored() -> None:
    a = mapped(_with_credentials(USER_CREATED))
    text = dump(a)
    assert SECRET not in text and TOTP_SEED not in text and "credentials" not in text
    assert a.details["representation"] == {"username": "zz.local", "enabled": True, "attributes": {"note": ["kept"]}}


def test_a_password_reset_stores_no_password_even_if_keycloak_sent_one() -> None:
    e = {**PASSWORD_RESET, "representation": json.dumps({"type": "password", "value": SECRET, "temporary": False})}
    a = mapped(e)
    assert SECRET not in dump(a) and a.details["representation"] == {"type": "password", "temporary": False}
    assert a.first(ObjectKind.USER) == LOCAL


def test_a_client_secret_is_never_stored() -> None:
    e = {**GROUP_CREATED, "resourceType": "CLIENT", "operationType": "UPDATE", "resourcePath": "clients/c-uuid",
         "representation": json.dumps({"clientId": "pacs-bridge", "secret": SECRET, "attributes": {
             "client.secret.rotated": SECRET, "jwt.credential.certificate": "MIIB"}})}
    a = mapped(e)
    assert a.type == AuditEventType.CONFIG_CHANGED and SECRET not in dump(a)
    assert a.details["representation"]["clientId"] == "pacs-bridge"


def test_a_representation_that_is_not_json_is_not_stored() -> None:
    a = mapped({**USER_CREATED, "representation": f"username=zz&password={SECRET}"})
    assert SECRET not in dump(a) and "representation" not in a.details
    assert "not JSON" in a.details["representation_note"]


def test_a_huge_representation_keeps_only_its_keys() -> None:
    a = mapped({**SYNC, "representation": json.dumps({"realm": "hospital", "big": "x" * 10_000})})
    assert a.details["representation"] == {"truncated": True, "characters": pytest.approx(10_050, abs=50),
                                           "keys": ["big", "realm"]}


def test_a_rejected_event_stores_no_credential_either(store) -> None:
    odd = {**_with_credentials(USER_CREATED), "operationType": "FROB"}
    rep = kae.pull(store, FakeSource([odd]), realm=REALM, issuer=ISSUER, keycloak_url=KC_URL)
    assert rep.errors == 1 and rep.recorded == 1
    (row,) = store.query()
    assert row["type"] == "audit.input_rejected" and "operationType" in row["body"]
    assert SECRET not in row["body"] and TOTP_SEED not in row["body"]


# ---------------------------------------------------------------------------- odd fields


@pytest.mark.parametrize("change, expect", [
    ({"time": None}, "time"), ({"time": "yesterday"}, "time"), ({"operationType": None}, "operationType"),
    ({"resourceType": "role mapping; DROP"}, "resourceType"), ({"authDetails": "admin"}, "authDetails"),
    ({"details": ["x"]}, "details"),
])
def test_an_unusable_field_makes_a_rejected_event(store, change: dict[str, Any], expect: str) -> None:
    rep = kae.pull(store, FakeSource([{**ROLE_GIVEN, **change}]), realm=REALM, issuer=ISSUER, keycloak_url=KC_URL)
    assert (rep.errors, rep.recorded) == (1, 1)
    (row,) = store.query()
    body = json.loads(row["body"])
    assert row["type"] == "audit.input_rejected" and expect in body["details"]["error"]
    assert body["details"]["source"] == "keycloak-admin"
    assert row["event_id"] == kae.admin_audit_event_id(REALM, ROLE_GIVEN["id"])  # recorded once


@pytest.mark.parametrize("change", [
    {"resourcePath": 12}, {"resourcePath": "users/"}, {"representation": {"not": "a string"}},
    {"authDetails": None}, {"authDetails": {"userId": 5, "ipAddress": "Basic 4711"}}, {"id": None},
    {"representation": "[1, 2, {\"name\": 3}]"},
])
def test_odd_but_usable_fields_keep_the_event(change: dict[str, Any]) -> None:
    a = mapped({**ROLE_GIVEN, **change})
    assert a.type == AuditEventType.ROLE_ASSIGNED
    assert "4711" not in dump(a)


def test_a_non_object_event_is_rejected_not_dropped(store) -> None:
    rep = kae.pull(store, FakeSource(["not an event", ROLE_GIVEN]), realm=REALM, issuer=ISSUER,
                   keycloak_url=KC_URL)
    assert rep.errors == 1 and [r["type"] for r in store.query()] == ["audit.input_rejected", "role.assigned"]


# ---------------------------------------------------------------------------- the pull


class FakeSource:
    """The admin API's behaviour: dateFrom inclusive, oldest first, first/max paging."""

    def __init__(self, events: list[Any], *, fail_lookups: bool = False):
        self.all = events
        self.calls: list[tuple[int, int, int]] = []
        self.fail_lookups = fail_lookups
        self.user_lookups = 0

    def admin_events(self, date_from_ms: int, first: int, max_results: int) -> list[Any]:
        self.calls.append((date_from_ms, first, max_results))
        hits = [e for e in self.all if not isinstance(e, dict) or not isinstance(e.get("time"), int)
                or e["time"] >= date_from_ms]
        hits.sort(key=lambda e: e.get("time") if isinstance(e, dict) and isinstance(e.get("time"), int) else 0)
        return copy.deepcopy(hits[first:first + max_results])

    def user(self, user_id: str) -> kce.KcUser | None:
        self.user_lookups += 1
        if self.fail_lookups:
            raise OSError("keycloak down")
        return USERS.get(user_id)

    def realm_user(self, realm_name: str, user_id: str) -> kce.KcUser | None:
        return self.user(user_id)

    def lookups(self) -> kae.Lookups:
        found = lookups()
        found.users = {}  # users are looked up per event, through user() / realm_user()
        return found


def test_pull_records_each_event_once_and_pages(store) -> None:
    src = FakeSource(RECORDED)
    rep = kae.pull(store, src, realm=REALM, issuer=ISSUER, keycloak_url=KC_URL, page_size=3)
    assert rep.recorded == len(RECORDED) and rep.errors == 0
    assert rep.by_type == {"config.changed": 2, "user.changed": 4, "role.assigned": 1, "role.removed": 1}
    assert [c[1] for c in src.calls] == [0, 3, 6]
    again = kae.pull(store, FakeSource(RECORDED), realm=REALM, issuer=ISSUER, keycloak_url=KC_URL)
    assert again.recorded == 0 and store.count() == len(RECORDED) and store.verify().ok
    assert src.user_lookups == 4  # once each per pull: admin, the seeded user, er.omar, zz.local


def test_lost_cursor_does_not_record_twice(store) -> None:
    kae.pull(store, FakeSource(RECORDED), realm=REALM, issuer=ISSUER, keycloak_url=KC_URL)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM pull_cursors")
    rep = kae.pull(store, FakeSource(RECORDED), realm=REALM, issuer=ISSUER, keycloak_url=KC_URL)
    assert rep.recorded == 0 and rep.duplicates == len(RECORDED)


def test_the_admin_cursor_is_not_the_login_cursor(store) -> None:
    kae.pull(store, FakeSource(RECORDED), realm=REALM, issuer=ISSUER, keycloak_url=KC_URL)
    assert kce.load_cursor(store.engine, kce.cursor_name(REALM)).time_ms == 0
    assert kce.load_cursor(store.engine, f"keycloak-admin-events:{REALM}").time_ms == RECORDED[-1]["time"]


def test_a_failing_user_lookup_keeps_the_event_with_keycloak_ids(store) -> None:
    rep = kae.pull(store, FakeSource([ROLE_GIVEN], fail_lookups=True), realm=REALM, issuer=ISSUER,
                   keycloak_url=KC_URL)
    assert rep.recorded == 1 and rep.errors == 0
    (row,) = store.query()
    assert row["type"] == "role.assigned" and json.loads(row["body"])["objects"][0]["id"] == OMAR


def test_pull_from_settings_and_serve_schedule(tmp_path, store) -> None:
    url = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(url)
    common = {"store": {"url": url}, "tokens": {"key_encryption_key": KeyEncryptor.generate_secret()},
              "audit": {"checkpoint_key_file": str(tmp_path / "k"),
                                               "keycloak_events_interval_seconds": 7}}

    class Sched:
        def __init__(self) -> None:
            self.jobs: dict[str, float] = {}

        def add_job(self, fn: Any, trigger: str, *, seconds: float, id: str, **_: Any) -> None:
            self.jobs[id] = seconds

    s = Sched()
    jobs.schedule(s, load_config(**common), None, None)  # type: ignore[arg-type]
    assert "audit-keycloak-admin-events" not in s.jobs
    s = Sched()
    settings = load_config(**common, keycloak={"admin_password": "x", "realm": REALM})
    jobs.schedule(s, settings, None, None)  # type: ignore[arg-type]
    assert s.jobs["audit-keycloak-admin-events"] == 7
    s = Sched()
    jobs.schedule(s, load_config(**{**common, "audit": {**common["audit"], "keycloak_admin_events": False}},
                                 keycloak={"admin_password": "x"}), None, None)  # type: ignore[arg-type]
    assert "audit-keycloak-admin-events" not in s.jobs and "audit-keycloak-events" in s.jobs
    rep = kae.pull_from_settings(settings, store, source_factory=lambda _: FakeSource([ROLE_GIVEN]))
    assert rep is not None and rep.recorded == 1


def test_realm_records_admin_events_with_their_details() -> None:
    for name, rep in realm.realms().items():
        assert rep["adminEventsEnabled"] is True and rep["adminEventsDetailsEnabled"] is True, name


def test_the_api_source_sorts_a_page_with_odd_items_instead_of_failing() -> None:
    class Admin:
        def get_admin_events(self, query: dict[str, Any]) -> list[Any]:
            return [ROLE_TAKEN, "odd", {"time": "x"}, ROLE_GIVEN]

    src = kae.AdminEventApiSource(Admin(), realm=REALM, admin_realm="master", admin_username="pacs-bridge")
    page = src.admin_events(0, 0, 100)
    assert len(page) == 4 and page[-2:] == [ROLE_GIVEN, ROLE_TAKEN]


def test_the_login_event_source_sorts_odd_items_too() -> None:
    """The same guard on the login pull: ``int(e["time"])`` used to fail the whole pull."""
    class Admin:
        def get_events(self, query: dict[str, Any]) -> list[Any]:
            return [{"id": "b", "time": 2}, ["odd"], {"id": "a", "time": 1}]

    assert [e[0] if isinstance(e, list) else e["id"] for e in kce.AdminApiSource(Admin()).events(0, 0, 10)] == [
        "odd", "a", "b"]
