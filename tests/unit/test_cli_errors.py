"""The CLI's one error handler: every project error becomes its message on stderr and its exit code.

Each case pins the exact stderr line and exit code a command gave before the error tree existed
(bridge/errors.py), so the restructure cannot change what an operator or a script sees."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.kek import KeyEncryptor

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "bridge.yaml")
POLICY = str(ROOT / "examples" / "policy.yaml")


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """The example configuration on a private SQLite file and checkpoint key."""
    monkeypatch.setenv("PACS_BRIDGE_STORE__URL", f"sqlite:///{tmp_path}/b.db")
    monkeypatch.setenv("PACS_BRIDGE_AUDIT__CHECKPOINT_KEY_FILE", str(tmp_path / "cp.key"))
    monkeypatch.setenv("PACS_BRIDGE_CONFIG", EXAMPLE)
    monkeypatch.setenv("PACS_BRIDGE_TOKENS__KEY_ENCRYPTION_KEY", KeyEncryptor.generate_secret())
    return tmp_path


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def bad_policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text("roles: {}\nrules: [1]\nbogus: true\n", encoding="utf-8")
    return p


def test_bad_configuration_exits_2_with_every_key_path(tmp_path):
    from bridge.config import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("directory:\n  page_size: -1\n  nope: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    res = run("check-config", str(bad))
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"{err.value}\n")


def test_bad_policy_exits_2(tmp_path):
    from bridge.policy.loader import PolicyError, load_policy

    p = bad_policy(tmp_path)
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    res = run("policy", "check", str(p))
    assert (res.exit_code, res.stderr) == (2, f"{err.value}\n")
    assert str(err.value).startswith(f"{p}: ")


def test_policy_explain_bad_policy_exits_2(env):
    res = run("policy", "explain", "alice", "--policy", str(bad_policy(env)))
    assert res.exit_code == 2 and res.stderr.startswith(f"{env / 'policy.yaml'}: ")


def test_policy_explain_without_policy_file_exits_2(env, monkeypatch):
    cfg = env / "bridge.yaml"
    cfg.write_text(Path(EXAMPLE).read_text(encoding="utf-8").replace(
        "policy_file: /etc/pacs-bridge/policy.yaml", "policy_file: null"), encoding="utf-8")
    res = run("policy", "explain", "alice", "-c", str(cfg))
    assert res.exit_code == 2
    assert res.stderr == "policy explain: no policy file (set sync.policy_file or pass --policy)\n"


def test_policy_explain_unknown_permission_exits_2_before_reading_the_directory(env):
    res = run("policy", "explain", "alice", "--policy", POLICY, "--permission", "VIEW")
    assert res.exit_code == 2 and res.stderr.startswith("policy explain: --permission: unknown permission 'VIEW'")


def test_policy_explain_directory_down_exits_1(env, monkeypatch):
    from pacs_devstack.state import free_port

    monkeypatch.setenv("PACS_BRIDGE_DIRECTORY__URL", f"ldaps://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PACS_BRIDGE_DIRECTORY__CA_FILE", "")
    monkeypatch.setenv("PACS_BRIDGE_DIRECTORY__TIMEOUT_SECONDS", "2")
    res = run("policy", "explain", "alice", "--policy", POLICY)
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("policy explain: directory unavailable: ") and res.stderr.count("\n") == 1


def test_db_upgrade_bad_url_exits_2(env):
    from bridge.store.db import StoreError, migrate

    with pytest.raises(StoreError) as err:
        migrate("nosuchdb://x/y")
    res = run("db", "upgrade", "--url", "nosuchdb://x/y")
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"{err.value}\n")


def test_demo_otp_unknown_account_exits_2():
    res = run("demo", "otp", "nobody")
    assert (res.exit_code, res.stderr) == (2, "demo otp: no demo account named 'nobody'\n")


def test_keys_bad_key_encryption_key_exits_2(env, monkeypatch):
    monkeypatch.setenv("PACS_BRIDGE_TOKENS__KEY_ENCRYPTION_KEY", "not base64 !!")
    res = run("keys", "list")
    assert (res.exit_code, res.stderr) == (2, "keys: tokens.key_encryption_key: not valid base64\n")


def test_audit_bad_checkpoint_key_file_exits_2(env):
    from bridge.audit.keys import CheckpointKey, KeyFileError

    (env / "cp.key").write_text("not a key\n", encoding="utf-8")
    with pytest.raises(KeyFileError) as err:
        CheckpointKey.load_public(env / "cp.key")
    res = run("audit", "verify")
    assert (res.exit_code, res.stderr) == (2, f"{err.value}\n")


def test_audit_verify_json_broken_chain_exits_1_with_only_the_report(env):
    from sqlalchemy import text

    from bridge.audit.store import open_store
    from bridge.config import load_config
    from bridge.core.audit_codes import AuditEventType
    from bridge.core.audit_events import Actor, AuditEvent
    from bridge.store import db

    db.migrate(f"sqlite:///{env}/b.db")
    store = open_store(load_config(EXAMPLE))
    store.append_many([AuditEvent(AuditEventType.STUDY_ACCESSED, actor=Actor(username=f"u{i}")) for i in range(3)])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET type = 'login.success' WHERE seq = 2"))
    res = run("audit", "verify", "--json")
    assert (res.exit_code, res.stderr) == (1, "")
    assert json.loads(res.stdout)["kind"] == "edited"
    res = run("audit", "verify")
    assert res.exit_code == 1 and res.stderr.startswith("audit trail BROKEN: edited at record 2")


def test_sync_bad_policy_exits_2(env):
    p = bad_policy(env)
    res = run("sync", "--plan", "--policy", str(p))
    assert res.exit_code == 2 and res.stderr.startswith(f"{p}: ")


def test_serve_bad_policy_exits_2(env, monkeypatch):
    p = bad_policy(env)
    monkeypatch.setenv("PACS_BRIDGE_SYNC__POLICY_FILE", str(p))
    res = run("serve", "--once", "--metrics-port", "0")
    assert res.exit_code == 2 and res.stderr.startswith(f"{p}: ")


def test_devstack_failure_exits_1(monkeypatch):
    from pacs_devstack import stack
    from pacs_devstack.process import DevstackError

    def fail(*_a, **_k):  # type: ignore[no-untyped-def]
        raise DevstackError("keycloak did not become healthy")

    monkeypatch.setattr(stack, "up", fail)
    res = run("devstack", "up")
    assert (res.exit_code, res.stderr) == (1, "devstack: keycloak did not become healthy\n")


def test_usage_errors_stay_clicks():
    res = run("sync", "--plan", "--apply")
    assert res.exit_code == 2 and "--plan and --apply exclude each other" in res.stderr


# ---------------------------------------------------------------- the handler itself


def _with_command(raise_: Exception):  # type: ignore[no-untyped-def]
    """A throw-away command under ``main`` that raises ``raise_``."""

    @click.command("raise-for-test")
    def cmd() -> None:
        click.echo("started")
        raise raise_

    main.add_command(cmd)
    try:
        return run("raise-for-test")
    finally:
        main.commands.pop("raise-for-test")


def test_handler_prints_message_and_exits_with_the_errors_code():
    from bridge.errors import BridgeError, InputError, UnavailableError

    assert InputError.exit_code == 2 and UnavailableError.exit_code == 1
    res = _with_command(UnavailableError("Keycloak at https://kc:8443 unreachable", subject="https://kc:8443"))
    assert (res.exit_code, res.stdout, res.stderr) == (1, "started\n", "Keycloak at https://kc:8443 unreachable\n")
    res = _with_command(BridgeError("custom", exit_code=7))
    assert (res.exit_code, res.stderr) == (7, "custom\n")


def test_handler_prefixes_the_area_of_errors_that_do_not_name_it():
    from bridge.errors import UnavailableError

    class ThingError(UnavailableError):
        area = "thing"

    res = _with_command(ThingError("down"))
    assert (res.exit_code, res.stderr) == (1, "thing: down\n")


def test_exit_status_prints_nothing_more():
    from bridge.errors import ExitStatus

    res = _with_command(ExitStatus(4))
    assert (res.exit_code, res.stdout, res.stderr) == (4, "started\n", "")


def test_other_exceptions_are_not_swallowed():
    res = _with_command(ZeroDivisionError("bug"))
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError)


def test_project_errors_are_in_the_tree():
    """Every error a command used to catch by hand is a BridgeError with the code it exited with."""
    from bridge.audit.keycloak_events import KeycloakEventsError
    from bridge.audit.keys import KeyFileError
    from bridge.config import ConfigError
    from bridge.directory.model import DirectoryUnavailable
    from bridge.errors import BridgeError
    from bridge.policy.loader import PolicyError
    from bridge.store.db import StoreError
    from bridge.sync.targets.base import TargetError
    from bridge.tokens.keys import SigningKeyError
    from pacs_devstack.process import DevstackError

    codes = {ConfigError: 2, PolicyError: 2, StoreError: 2, KeyFileError: 2, KeycloakEventsError: 2,
             SigningKeyError: 2, DirectoryUnavailable: 1, TargetError: 1, DevstackError: 1}
    for cls, code in codes.items():
        assert issubclass(cls, BridgeError) and cls.exit_code == code, cls
    assert issubclass(PolicyError, ValueError) and issubclass(KeycloakEventsError, RuntimeError)


def test_no_command_echoes_and_exits_by_hand():
    """One handler (bridge/cli.py): no command module prints an error and calls sys.exit itself."""
    for path in [ROOT / "bridge" / "cli.py", *sorted((ROOT / "bridge").glob("*/cli.py"))]:
        src = path.read_text(encoding="utf-8")
        assert "sys.exit(" not in src and "SystemExit" not in src, path
