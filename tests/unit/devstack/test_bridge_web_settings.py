"""The dev stack's bridge configuration: rate limits in the stack's Redis when it runs (TLS,
password from a file), in memory otherwise; the web server with the metrics directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config
from pacs_devstack import bridge as bridge_service
from pacs_devstack import redis as redis_service
from pacs_devstack.service import StackContext
from pacs_devstack.tls import ensure_ca


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> StackContext:
    monkeypatch.setenv("PACS_BRIDGE_DEVSTACK_DIR", str(tmp_path))
    return StackContext(ca_file=ensure_ca())


def _load(tmp_path: Path, data: dict) -> object:
    import yaml

    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_with_redis_the_limits_are_shared(ctx: StackContext, tmp_path) -> None:
    ctx.info["redis"] = {"url": "rediss://127.0.0.1:6390/0", "password_secret": redis_service.PASSWORD_SECRET}
    settings = _load(tmp_path, bridge_service.SERVICE.settings_dict(ctx, 9443))
    web = settings.web  # type: ignore[attr-defined]
    assert web.rate_limit_storage_url == "rediss://127.0.0.1:6390/0"
    assert web.rate_limit_storage_ca_file == ctx.ca_file
    assert web.rate_limit_storage_password.get_secret_value() == ctx.secret(redis_service.PASSWORD_SECRET)
    assert web.trusted_proxy_hops == 0  # the stack's bridge is reached directly


def test_without_redis_memory(ctx: StackContext, tmp_path) -> None:
    settings = _load(tmp_path, bridge_service.SERVICE.settings_dict(ctx, 9443))
    assert settings.web.rate_limit_storage_url == "memory://"  # type: ignore[attr-defined]


def test_web_server_command_and_environment(tmp_path) -> None:
    argv = bridge_service.web_argv("127.0.0.1:1", tmp_path / "c.pem", tmp_path / "k.pem")
    assert argv[argv.index("-m") + 1] == "bridge.deploy.web_server"
    assert argv[argv.index("--workers") + 1] == str(bridge_service.WORKERS)
    assert argv[argv.index("--threads") + 1] == str(bridge_service.THREADS)
    env = bridge_service.web_env(tmp_path / "bridge.yaml", tmp_path / "prom")
    assert env == {"PACS_BRIDGE_CONFIG": str(tmp_path / "bridge.yaml"),
                   "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}


def test_redis_config_is_tls_only_with_a_password(ctx: StackContext, monkeypatch) -> None:
    import sys

    monkeypatch.setattr(redis_service, "BINARY", Path(sys.executable))  # only the config is checked here
    svc = redis_service.RedisService()
    svc.prepare(ctx)
    text = svc.config_file.read_text()
    assert "\nport 0\n" in text and "\nbind 127.0.0.1\n" in text and "tls-port " in text
    assert f'requirepass "{ctx.secret(redis_service.PASSWORD_SECRET)}"' in text
    assert svc.config_file.stat().st_mode & 0o077 == 0
