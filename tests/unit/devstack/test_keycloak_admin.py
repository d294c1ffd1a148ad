"""The dev stack's Keycloak admin client is the bridge's (python-keycloak, built by
bridge/kcadmin.py, verifying the stack CA), and a failed admin call while seeding is a
DevstackError that names the realm, the user and what was being done."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from keycloak import KeycloakAdmin
from keycloak.exceptions import KeycloakConnectionError, KeycloakPostError, KeycloakPutError

from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.process import DevstackError
from pacs_devstack.service import StackContext
from pacs_devstack.tls import ensure_ca


def test_the_stack_admin_client_is_the_bridges_and_verifies_the_stack_ca(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PACS_BRIDGE_DEVSTACK_DIR", str(tmp_path))
    ca = ensure_ca()
    stack = {"ca": {"file": str(ca)}, "keycloak": {"url": "https://127.0.0.1:1", "admin_username": "root"}}
    admin = kc.stack_admin(stack, "hospital-ldap")  # no call yet: python-keycloak logs in on the first one
    assert isinstance(admin, KeycloakAdmin)
    conn = admin.connection
    assert conn.verify == str(ca)  # CA-pinned, never verify=False
    assert (conn.server_url, conn.realm_name, conn.user_realm_name) == ("https://127.0.0.1:1/", "hospital-ldap",
                                                                       "master")
    assert (conn.username, conn.password) == ("root", StackContext(ca_file=ca).secret(kc.ADMIN_SECRET))


class FakeAdmin:
    """The three calls seeding makes, answering like Keycloak; ``fail`` names the one that fails."""

    def __init__(self, fail: str = "", fail_user: str = "") -> None:
        self.connection = SimpleNamespace(realm_name="hospital")
        self.fail, self.fail_user = fail, fail_user
        self.updated: list[str] = []

    def sync_users(self, storage_id: str, action: str) -> dict[str, Any]:
        assert action == "triggerFullSync"
        if self.fail == "sync":
            raise KeycloakPostError("LDAP bind failed", response_code=500)
        return {"added": 40, "failed": 0, "status": "40 imported"}

    def get_users(self, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self.fail == "list":
            raise KeycloakConnectionError("Can't connect to server")
        return [{"username": u["username"], "id": "id-" + u["username"]} for u in demo_data.users()]

    def update_user(self, user_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if user_id == "id-" + self.fail_user:
            raise KeycloakPutError("unknown_error", response_code=500)
        assert payload["credentials"][0]["type"] == "otp"
        self.updated.append(user_id)
        return {}


def test_seeding_sets_a_totp_credential_on_each_demo_user_but_one() -> None:
    admin = FakeAdmin()
    kc.seed_otp(admin, "component")  # type: ignore[arg-type]
    wanted = {"id-" + u["username"] for u in demo_data.users() if not u["disabled"]} - {"id-" + kc.NO_OTP_USER}
    assert set(admin.updated) == wanted


@pytest.mark.parametrize(("admin", "words"), [
    (FakeAdmin(fail="sync"), ("hospital", "full user sync", "LDAP bind failed")),
    (FakeAdmin(fail="list"), ("hospital", "list users", "connect")),
    (FakeAdmin(fail_user="rad.alice"), ("hospital", "rad.alice", "TOTP", "500")),
])
def test_a_failed_admin_call_names_realm_user_and_action(admin: FakeAdmin, words: tuple[str, ...]) -> None:
    with pytest.raises(DevstackError) as err:
        kc.seed_otp(admin, "component")  # type: ignore[arg-type]
    for word in words:
        assert word in str(err.value)


def test_a_partly_failed_sync_stops_the_seeding() -> None:
    admin = FakeAdmin()
    admin.sync_users = lambda storage_id, action: {"failed": 3, "status": "3 users failed"}  # type: ignore[method-assign]
    with pytest.raises(DevstackError, match="realm hospital: user sync failed for 3 users"):
        kc.seed_otp(admin, "component")  # type: ignore[arg-type]
