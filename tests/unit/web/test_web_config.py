"""The ``web`` section: check-config accepts a sensible one and names every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import ConfigError, load_config


def check(tmp_path: Path, web: dict) -> tuple[int, str]:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"web": web}))
    res = CliRunner().invoke(main, ["check-config", str(path)])
    return res.exit_code, res.output


def test_defaults() -> None:
    w = load_config().web
    assert w.trusted_proxy_hops == 0
    assert w.rate_limit_storage_url == "memory://"
    assert w.metrics.enabled and w.metrics.allow == ["127.0.0.0/8", "::1/128"] and w.metrics.bearer_token is None


def test_a_full_section_is_accepted_and_summarised_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "redis.pw").write_text("redis-secret-value\n")
    (tmp_path / "metrics.token").write_text("metrics-secret-value-0123\n")
    code, out = check(tmp_path, {
        "trusted_proxy_hops": 1,
        "rate_limit_storage_url": "rediss://127.0.0.1:6380/0",
        "rate_limit_storage_password_file": str(tmp_path / "redis.pw"),
        "rate_limit_storage_ca_file": str(tmp_path / "ca.pem"),
        "rate_limits": {"login": "20/second;600/minute", "token": "50/second"},
        "metrics": {"allow": ["10.20.0.0/16", "::1/128"], "bearer_token_file": str(tmp_path / "metrics.token")},
    })
    assert code == 0, out
    assert "1 trusted proxy hop(s)" in out and "rediss" in out and "10.20.0.0/16" in out
    assert "redis-secret-value" not in out and "metrics-secret-value" not in out


@pytest.mark.parametrize("web, where, what", [
    ({"trusted_proxy_hops": -1}, "web.trusted_proxy_hops", "greater than or equal to 0"),
    ({"trusted_proxy_hops": 9}, "web.trusted_proxy_hops", "less than or equal to 5"),
    ({"trusted_proxy_hops": "one"}, "web.trusted_proxy_hops", "integer"),
    ({"rate_limit_storage_url": "memcached://x"}, "web.rate_limit_storage_url", "memory://, redis:// or rediss://"),
    ({"rate_limit_storage_url": "redis://:pw@127.0.0.1:6379"}, "web.rate_limit_storage_url", "no credentials"),
    ({"rate_limit_storage_url": "memory://", "rate_limit_storage_password": "x"},
     "web.rate_limit_storage_password", "takes no password"),
    ({"rate_limit_storage_url": "redis://127.0.0.1:6379", "rate_limit_storage_ca_file": "/ca.pem"},
     "web.rate_limit_storage_ca_file", "rediss://"),
    ({"rate_limits": {"logon": "1/second"}}, "web.rate_limits", "logon: unknown endpoint group"),
    ({"rate_limits": {"login": "lots"}}, "web.rate_limits", "not a limit"),
    ({"metrics": {"allow": ["10.0.0.1/8"]}}, "web.metrics.allow", "CIDR"),
    ({"metrics": {"allow": ["everyone"]}}, "web.metrics.allow", "CIDR"),
    ({"metrics": {"bearer_token": "short"}}, "web.metrics.bearer_token", "at least 16"),
    ({"metrics": {"bearer_token_file": "/nonexistent/token"}}, "web.metrics.bearer_token", "cannot read"),
    ({"metrics": {"alow": ["10.0.0.0/8"]}}, "web.metrics.alow", "unknown key"),
    ({"trusted_proxies": 1}, "web.trusted_proxies", "unknown key"),
])
def test_mistakes_are_named(tmp_path: Path, web: dict, where: str, what: str) -> None:
    code, out = check(tmp_path, web)
    assert code == 2, out
    assert where in out and what in out, out


def test_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_BRIDGE_WEB__TRUSTED_PROXY_HOPS", "2")
    assert load_config().web.trusted_proxy_hops == 2


def test_every_error_is_listed() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(web={"trusted_proxy_hops": -1, "metrics": {"allow": ["x"]}})
    keys = [k for k, _ in exc.value.problems]
    assert "web.trusted_proxy_hops" in keys and "web.metrics.allow" in keys
