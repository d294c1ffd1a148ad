"""Logins that happen inside the real Keycloak reach the audit trail through the pull job.

On the dev stack's Keycloak (realm `hospital`, federating Samba AD): one user logs in with
password and OTP, one types a wrong password, one a wrong OTP code.  Then the job pulls the
realm's user events into a fresh bridge database: a login success, a login failure and an MFA
failure, each by the right person (directory id), the second run (through the CLI) adds nothing,
the chain verifies, and neither a password nor an OTP code appears in any record.

Users: the Emergency department's er.* accounts, which no other test logs in with (an OTP code
cannot be used twice within its 30 s window).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.audit import jobs
from bridge.audit.store import open_store
from bridge.cli import main
from bridge.config import load_config
from bridge.kek import KeyEncryptor
from bridge.store.db import migrate
from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import LoginError, client_for, fresh_totp
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext

pytestmark = pytest.mark.integration

OK_USER, BAD_PASSWORD_USER, BAD_OTP_USER = "er.omar", "er.pia", "er.quinn"
ISSUER = "https://bridge.audit-kcev.test"


def _wrong_otp(right: str) -> str:
    """A six-digit code that is not the current one (nor the neighbouring windows' codes, almost surely)."""
    return f"{(int(right) + 500_000) % 1_000_000:06d}"


@pytest.fixture(scope="module")
def pulled(stack: dict[str, Any], directory_ids: dict[str, dict[str, str]],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for name in ("keycloak", "samba"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run (realm {AD_REALM})")
    work = tmp_path_factory.mktemp("kc-events")
    ca = stack["ca"]["file"]
    admin_password = StackContext(ca_file=Path(ca)).secret(kc.ADMIN_SECRET)
    url = f"sqlite:///{work}/bridge.db"
    migrate(url)
    config = {"keycloak": {"url": stack["keycloak"]["url"], "realm": AD_REALM, "ca_file": ca,
                           "admin_username": stack["keycloak"]["admin_username"]},
              "store": {"url": url}, "tokens": {"issuer": ISSUER, "key_encryption_key": KeyEncryptor.generate_secret()},
              "audit": {"checkpoint_key_file": str(work / "audit.key"), "spool_dir": str(work / "spool"),
                        "archive_dir": str(work / "archive")}}
    settings = load_config(**{**config, "keycloak": {**config["keycloak"], "admin_password": admin_password}})

    secrets_used: list[str] = []
    client = client_for(stack, AD_REALM, "pacs-viewer")
    # 1. a successful MFA login
    ok = demo_data.user(OK_USER)
    provider = fresh_totp(ok["totp_secret"], f"{AD_REALM}/{OK_USER}")

    def otp() -> str:
        code = provider()
        secrets_used.append(code)
        return code

    result = client.login(OK_USER, str(ok["password"]), otp=otp)
    assert result.steps == ["kc-form-login", "kc-otp-login-form"]
    # 2. a wrong password
    wrong_password = "Wr0ng-" + str(demo_data.user(BAD_PASSWORD_USER)["password"])[::-1]
    with pytest.raises(LoginError, match="login form shown again"):
        client.login(BAD_PASSWORD_USER, wrong_password)
    # 3. the right password, a wrong OTP code
    bad = demo_data.user(BAD_OTP_USER)
    code = _wrong_otp(fresh_totp(bad["totp_secret"], f"{AD_REALM}/{BAD_OTP_USER}/probe")())
    with pytest.raises(LoginError, match="OTP code rejected"):
        client.login(BAD_OTP_USER, str(bad["password"]), otp=code)
    secrets_used += [str(ok["password"]), wrong_password, str(bad["password"]), code, admin_password]

    store = open_store(settings)
    first = jobs.keycloak_events(settings, store)

    # 4. the second run, as an operator would: the CLI, the admin password from the environment
    config_file = work / "bridge.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PACS_BRIDGE_KEYCLOAK__ADMIN_PASSWORD": admin_password}
    second = CliRunner().invoke(main, ["audit", "pull-keycloak-events", "-c", str(config_file), "--json"], env=env)
    return {"first": first, "second": second, "store": store, "secrets": secrets_used,
            "ids": directory_ids[AD_REALM], "rows": store.query()}


def _rows_of(pulled: dict[str, Any], username: str) -> list[dict[str, Any]]:
    return [r for r in pulled["rows"] if r["actor_username"] == username]


def _expect_one(pulled: dict[str, Any], username: str, kind: str) -> dict[str, Any]:
    rows = _rows_of(pulled, username)
    assert [r["type"] for r in rows] == [kind], rows
    row = rows[0]
    assert row["actor_user"] == f"{pulled['ids'][username]}@{ISSUER}"  # the directory's objectGUID
    assert row["client_id"] == "pacs-viewer" and row["network_address"] == "127.0.0.1"
    return row


def test_login_success_is_recorded_by_directory_id(pulled: dict[str, Any]) -> None:
    row = _expect_one(pulled, OK_USER, "login.success")
    assert row["outcome"] == 0


def test_wrong_password_is_a_login_failure(pulled: dict[str, Any]) -> None:
    row = _expect_one(pulled, BAD_PASSWORD_USER, "login.failure")
    assert row["outcome"] == 4
    assert json.loads(row["body"])["details"]["error"] == "invalid_user_credentials"


def test_wrong_otp_is_an_mfa_failure(pulled: dict[str, Any]) -> None:
    row = _expect_one(pulled, BAD_OTP_USER, "login.mfa_failure")
    assert row["outcome"] == 4
    assert json.loads(row["body"])["details"]["reason"] == "invalid_user_credentials: otp"


def test_second_run_adds_nothing_and_the_chain_verifies(pulled: dict[str, Any]) -> None:
    first, second = pulled["first"], pulled["second"]
    assert first is not None and first.recorded >= 3
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert report["recorded"] == 0, report
    assert pulled["store"].count() == len(pulled["rows"])
    assert pulled["store"].verify().ok


def test_no_password_or_otp_in_any_record(pulled: dict[str, Any]) -> None:
    store = pulled["store"]
    with store.engine.connect() as conn:
        dump = "\n".join(json.dumps([str(v) for v in row]) for row in conn.exec_driver_sql(
            "SELECT * FROM audit_events"))
    assert dump.count("\n") + 1 >= 3
    for secret in pulled["secrets"]:
        # bounded: a 6-digit OTP code could otherwise match inside a hash or an id by chance
        assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", dump), \
            "a password or OTP code is in the audit trail"
        assert len(secret) < 8 or secret not in dump
