"""Per-account protection is Keycloak's brute-force detection (the bridge's limits are per client
address and sized for shared addresses).  Against the dev stack's real Keycloak: after the realm's
``failureFactor`` wrong passwords the account is temporarily locked -- its right password is
refused too -- while another account behind the same address logs in; unlocking restores it.

Two dedicated local accounts (created here, deleted at the end) so that no other test's user is
ever locked.  Failures are spaced by more than ``quickLoginCheckMilliSeconds`` so the lock comes
from the failure count, not from the quick-login rule.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from keycloak import KeycloakAdmin

from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import LoginError, client_for
from pacs_devstack.realm import AD_REALM
from pacs_devstack.state import project_root

pytestmark = pytest.mark.integration

REALM_FILE = project_root() / "keycloak-realm" / "hospital-realm.json"


@pytest.fixture(scope="module")
def admin(stack: dict[str, Any]) -> KeycloakAdmin:
    if "keycloak" not in stack:
        pytest.skip("keycloak is not part of this dev stack run")
    return kc.stack_admin(stack, AD_REALM)


@pytest.fixture
def accounts(admin: KeycloakAdmin) -> Iterator[list[dict[str, str]]]:
    made: list[dict[str, str]] = []
    for _ in range(2):
        name = f"bf.test-{secrets.token_hex(4)}"
        password = "Bf1!" + secrets.token_urlsafe(18)
        user_id = admin.create_user({
            "username": name, "enabled": True, "firstName": "Brute", "lastName": "Force",
            "email": f"{name}@example.test", "emailVerified": True,
            "credentials": [{"type": "password", "value": password, "temporary": False}]})
        made.append({"username": name, "password": password, "id": user_id})
    yield made
    for a in made:  # unlock, then remove: nothing of this test stays in the realm
        admin.clear_bruteforce_attempts_for_user(a["id"])
        admin.delete_user(a["id"])


def password_accepted(stack: dict[str, Any], username: str, password: str) -> bool:
    """True when Keycloak took the password: tokens, or the next factor/enrolment form."""
    try:
        client_for(stack, AD_REALM, "pacs-viewer").login(username, password)
    except LoginError as exc:
        text = str(exc)
        if "login form shown again" in text:
            return False
        if "OTP" in text:  # asked for the second factor (or to enrol one): the password was right
            return True
        raise
    return True


def status(admin: KeycloakAdmin, user_id: str) -> dict[str, Any]:
    return admin.get_bruteforce_detection_status(user_id)


def wait_for_failures(admin: KeycloakAdmin, user_id: str, n: int, timeout: float = 10) -> dict[str, Any]:
    """Keycloak records a failure just after answering the login form: poll briefly."""
    deadline = time.monotonic() + timeout
    st = status(admin, user_id)
    while st["numFailures"] < n and time.monotonic() < deadline:
        time.sleep(0.2)
        st = status(admin, user_id)
    return st


def test_the_realm_has_brute_force_detection(admin: KeycloakAdmin) -> None:
    live = admin.get_realm(AD_REALM)
    wanted = json.loads(REALM_FILE.read_text())
    for key in ("bruteForceProtected", "permanentLockout", "failureFactor", "waitIncrementSeconds",
                "maxFailureWaitSeconds", "quickLoginCheckMilliSeconds"):
        assert live[key] == wanted[key], key
    assert live["bruteForceProtected"] is True and live["permanentLockout"] is False


def test_account_is_locked_after_the_configured_failures(stack: dict[str, Any], admin: KeycloakAdmin,
                                                         accounts: list[dict[str, str]]) -> None:
    target, neighbour = accounts
    live = admin.get_realm(AD_REALM)
    factor = int(live["failureFactor"])
    quick = int(live["quickLoginCheckMilliSeconds"]) / 1000
    assert password_accepted(stack, target["username"], target["password"])  # works before
    admin.clear_bruteforce_attempts_for_user(target["id"])  # reset

    for i in range(factor):
        time.sleep(quick + 0.3)
        assert not password_accepted(stack, target["username"], "wrong-" + secrets.token_hex(6))
        st = wait_for_failures(admin, target["id"], i + 1)
        assert st["numFailures"] == i + 1, st
        if i + 1 < factor:
            assert st["disabled"] is False, f"locked after only {i + 1} failures: {st}"
    assert status(admin, target["id"])["disabled"] is True

    # locked: the right password is refused as well (Keycloak does not say why)
    assert not password_accepted(stack, target["username"], target["password"])
    # per account, not per address: a colleague at the same workstation address logs in
    assert password_accepted(stack, neighbour["username"], neighbour["password"])

    admin.clear_bruteforce_attempts_for_user(target["id"])  # unlock
    assert status(admin, target["id"])["disabled"] is False
    assert password_accepted(stack, target["username"], target["password"])
