"""Configuration: every error reported with its key path; env overrides; secrets from files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bridge.yaml"
    p.write_text(text)
    return p


def test_example_file_is_valid() -> None:
    s = load_config(ROOT / "examples" / "bridge.yaml")
    assert s.directory.url.startswith("ldaps://")
    assert s.tokens.algorithm == "ES256"


def test_three_mistakes_are_all_listed(tmp_path: Path) -> None:
    path = write(tmp_path, """
directory:
  url: http://dc1.hospital.test
tokens:
  lifetime_seconds: 5
keycloak:
  realmm: hospital
""")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    keys = [k for k, _ in exc.value.problems]
    assert keys == ["keycloak.realmm", "directory.url", "tokens.lifetime_seconds"]
    assert "must start with ldap:// or ldaps://" in dict(exc.value.problems)["directory.url"]


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    bad = write(tmp_path, "directory: {url: http://x}\nstore: {url: mysql://x}\nbridge: {public_url: http://b}\n")
    res = CliRunner().invoke(main, ["check-config", str(bad)])
    assert res.exit_code == 2
    for key in ("directory.url", "store.url", "bridge.public_url"):
        assert key in res.output
    ok = CliRunner().invoke(main, ["check-config", str(ROOT / "examples" / "bridge.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "directory" in ok.output and "OK" in ok.output


def test_plain_ldap_needs_explicit_opt_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "directory: {url: 'ldap://dc1:389'}\n"))
    assert exc.value.problems[0][0] == "directory.url"
    assert load_config(write(tmp_path, "directory: {url: 'ldap://dc1:389', start_tls: true}\n")).directory.start_tls
    assert load_config(write(tmp_path, "directory: {url: 'ldap://dc1:389', allow_plaintext: true}\n"))


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "tokens: {algorithm: RS256, lifetime_seconds: 120}\n")
    monkeypatch.setenv("PACS_BRIDGE_TOKENS__LIFETIME_SECONDS", "60")
    s = load_config(path)
    assert s.tokens.lifetime_seconds == 60
    assert s.tokens.algorithm == "RS256"  # the rest of the section is kept


def test_secret_from_file_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "bind"
    secret.write_text("S3cr3t-Bind!\n")
    path = write(tmp_path, f"directory: {{bind_password_file: {secret}}}\n")
    s = load_config(path)
    assert s.directory.bind_password is not None
    assert s.directory.bind_password.get_secret_value() == "S3cr3t-Bind!"
    assert "S3cr3t" not in repr(s)
    res = CliRunner().invoke(main, ["check-config", str(path)])
    assert "S3cr3t" not in res.output and "password set" in res.output


def test_unreadable_secret_file_named(tmp_path: Path) -> None:
    path = write(tmp_path, "scim: {bearer_token_file: /nonexistent/token}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    key, reason = exc.value.problems[0]
    assert key == "scim.bearer_token" and "/nonexistent/token" in reason


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "directory:\n  url: [unclosed\n"))
    assert exc.value.problems[0][0].startswith("line ")
