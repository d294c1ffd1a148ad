"""Changes made through Keycloak's admin API reach the audit trail through the admin-event pull.

On the dev stack's Keycloak (realm `hospital`, federating Samba AD; the realm keeps admin events
with their details): the bridge gets an admin account of its own in `master`, as a site should
give it.  Then the `admin` console user gives `ref.emil` the privileged realm role `pacs-admin`
by hand and takes it back, and creates a local account with a password; the bridge's account
gives and takes the `auditor` role (what its sync does).  The job pulls the realm's admin events
into a fresh bridge database: the hand-given role is a `role.assigned` naming the admin, the
user (by directory id) and the role, flagged as not by the sync; the bridge's change is flagged
as by the sync; a second pull (the CLI) adds nothing; the chain verifies; no password or TOTP
seed (the dev stack seeds TOTP credentials through the same admin API) is in any record.

User: `ref.emil`, whom no other test uses (roles are given back at the end).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.audit import jobs
from bridge.audit.store import open_store
from bridge.cli import main
from bridge.config import load_config
from bridge.kcadmin import admin_client
from bridge.kek import KeyEncryptor
from bridge.store.db import migrate
from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext

pytestmark = pytest.mark.integration

USER, HAND_ROLE, SYNC_ROLE = "ref.emil", "pacs-admin", "auditor"
ISSUER = "https://bridge.audit-kcadmin.test"


@pytest.fixture(scope="module")
def pulled(stack: dict[str, Any], directory_ids: dict[str, dict[str, str]],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for name in ("keycloak", "samba"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run (realm {AD_REALM})")
    work = tmp_path_factory.mktemp("kc-admin-events")
    ca, url = stack["ca"]["file"], stack["keycloak"]["url"]
    console_password = StackContext(ca_file=Path(ca)).secret(kc.ADMIN_SECRET)
    console = admin_client(url, AD_REALM, kc.ADMIN_USERNAME, console_password, ca_file=ca)

    # the bridge's own admin account (master realm, role admin), made by the console admin
    master = admin_client(url, "master", kc.ADMIN_USERNAME, console_password, ca_file=ca)
    bridge_user, bridge_password = f"pacs-bridge-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    bridge_id = master.create_user({"username": bridge_user, "enabled": True, "credentials": [
        {"type": "password", "value": bridge_password, "temporary": False}]})
    master.assign_realm_roles(bridge_id, [master.get_realm_role("admin")])

    db_url = f"sqlite:///{work}/bridge.db"
    migrate(db_url)
    config = {"keycloak": {"url": url, "realm": AD_REALM, "ca_file": ca, "admin_username": bridge_user},
              "store": {"url": db_url},
              "tokens": {"issuer": ISSUER, "key_encryption_key": KeyEncryptor.generate_secret()},
              "audit": {"checkpoint_key_file": str(work / "audit.key"), "spool_dir": str(work / "spool"),
                        "archive_dir": str(work / "archive")}}
    settings = load_config(**{**config, "keycloak": {**config["keycloak"], "admin_password": bridge_password}})

    (user,) = console.get_users({"username": USER, "exact": True})
    local_password = "L0cal-" + secrets.token_urlsafe(12)
    # by hand, as the console admin: a privileged role given and taken back, a local account with a password
    hand_role = console.get_realm_role(HAND_ROLE)
    console.assign_realm_roles(user["id"], [hand_role])
    local_name = f"zz.local.{secrets.token_hex(3)}"
    local_id = console.create_user({"username": local_name, "enabled": True, "credentials": [
        {"type": "password", "value": local_password, "temporary": False}]})
    # by the bridge's account, the way its sync changes roles (bridge/kcadmin.py)
    from bridge.kcadmin import admin_from_settings

    as_bridge = admin_from_settings(settings.keycloak)
    sync_role = as_bridge.get_realm_role(SYNC_ROLE)
    as_bridge.assign_realm_roles(user["id"], [sync_role])
    as_bridge.delete_realm_roles_of_user(user["id"], [sync_role])
    console.delete_realm_roles_of_user(user["id"], [hand_role])
    console.delete_user(local_id)

    store = open_store(settings)
    first = jobs.keycloak_admin_events(settings, store)
    # the second run, as an operator would: the CLI, the admin password from the environment
    config_file = work / "bridge.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PACS_BRIDGE_KEYCLOAK__ADMIN_PASSWORD": bridge_password}
    second = CliRunner().invoke(main, ["audit", "pull-keycloak-admin-events", "-c", str(config_file), "--json"],
                                env=env)
    master.delete_user(bridge_id)
    seeds = [str(u["totp_secret"]) for u in demo_data.users() if u.get("totp_secret")]
    return {"first": first, "second": second, "store": store, "rows": store.query(),
            "directory_id": directory_ids[AD_REALM][USER], "user_kc_id": user["id"],
            "bridge_user": bridge_user, "secrets": [console_password, bridge_password, local_password, *seeds]}


def _role_events(pulled: dict[str, Any], kind: str, role: str) -> list[dict[str, Any]]:
    """The admin events of ``role`` given to / taken from USER (the dev stack's own bridge may be
    syncing other users' roles, and may take a hand-given managed role back, at the same time)."""
    out = []
    for r in pulled["rows"]:
        body = json.loads(r["body"])
        d = body["details"]
        if r["type"] == kind and d.get("source") == "keycloak-admin" and role in d.get("roles", []) \
                and d.get("target_keycloak_user_id") == pulled["user_kc_id"]:
            out.append({**r, "body": body})
    return out


def test_a_role_given_by_hand_names_the_admin_the_user_and_the_role(pulled: dict[str, Any]) -> None:
    (row,) = _role_events(pulled, "role.assigned", HAND_ROLE)
    assert row["actor_username"] == kc.ADMIN_USERNAME and row["actor_user"].endswith("/realms/master")
    assert row["client_id"] == "admin-cli" and row["network_address"]
    objects = row["body"]["objects"]
    assert {"kind": "user", "id": pulled["directory_id"], "name": USER} in objects  # by the directory id
    assert {"kind": "role", "id": HAND_ROLE} in objects
    details = row["body"]["details"]
    assert details["by_bridge_sync"] is False and details["target_keycloak_user_id"] == pulled["user_kc_id"]
    assert details["operation"] == "CREATE" and details["resource_type"] == "REALM_ROLE_MAPPING"
    removed = _role_events(pulled, "role.removed", HAND_ROLE)  # by the console admin (or the stack's own sync)
    assert removed and all(r["body"]["details"]["by_bridge_sync"] is False for r in removed)


def test_the_bridges_own_change_is_flagged_as_the_sync(pulled: dict[str, Any]) -> None:
    (given,) = _role_events(pulled, "role.assigned", SYNC_ROLE)
    taken = [r for r in _role_events(pulled, "role.removed", SYNC_ROLE) if r["actor_username"] == pulled["bridge_user"]]
    assert len(taken) == 1
    for row in (given, *taken):
        assert row["body"]["details"]["by_bridge_sync"] is True
        assert row["actor_username"] == pulled["bridge_user"]


def test_user_changes_are_recorded(pulled: dict[str, Any]) -> None:
    changed = [json.loads(r["body"])["details"] for r in pulled["rows"] if r["type"] == "user.changed"]
    ops = {(d["operation"], d["resource_type"]) for d in changed}
    assert {("CREATE", "USER"), ("DELETE", "USER"), ("UPDATE", "USER")} <= ops  # UPDATE: the stack's OTP seeding


def test_second_run_adds_nothing_and_the_chain_verifies(pulled: dict[str, Any]) -> None:
    first, second = pulled["first"], pulled["second"]
    assert first is not None and first.recorded >= 6 and first.errors == 0, first
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["recorded"] == 0
    assert pulled["store"].count() == len(pulled["rows"])
    assert pulled["store"].verify().ok


def test_no_password_or_totp_seed_in_any_record(pulled: dict[str, Any]) -> None:
    with pulled["store"].engine.connect() as conn:
        dump = "\n".join(json.dumps([str(v) for v in row]) for row in conn.exec_driver_sql(
            "SELECT * FROM audit_events"))
    for secret in pulled["secrets"]:
        assert secret not in dump, "a password or TOTP seed is in the audit trail"
