"""gunicorn hooks: a clean metrics directory at start, dead workers' live gauges dropped."""

from __future__ import annotations

from types import SimpleNamespace

from bridge.web import gunicorn_conf


def test_on_starting_empties_the_directory(tmp_path, monkeypatch) -> None:
    d = tmp_path / "prom"
    d.mkdir()
    (d / "counter_123.db").write_bytes(b"old run")
    (d / "keep.txt").write_text("not ours")
    monkeypatch.setenv(gunicorn_conf.MULTIPROC_ENV, str(d))
    gunicorn_conf.on_starting(None)
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]


def test_on_starting_creates_a_private_directory(tmp_path, monkeypatch) -> None:
    d = tmp_path / "new" / "prom"
    monkeypatch.setenv(gunicorn_conf.MULTIPROC_ENV, str(d))
    gunicorn_conf.on_starting(None)
    assert d.is_dir() and d.stat().st_mode & 0o077 == 0


def test_child_exit_removes_the_workers_live_gauges(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(gunicorn_conf.MULTIPROC_ENV, str(tmp_path))
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"x")
    (tmp_path / "counter_4242.db").write_bytes(b"x")
    gunicorn_conf.child_exit(None, SimpleNamespace(pid=4242))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db"]  # counts stay counted


def test_without_the_variable_nothing_happens(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(gunicorn_conf.MULTIPROC_ENV, raising=False)
    gunicorn_conf.on_starting(None)
    gunicorn_conf.child_exit(None, SimpleNamespace(pid=1))


def test_gunicorn_trusts_no_forwarded_headers_by_itself() -> None:
    """Only ProxyFix (web.trusted_proxy_hops) decides; gunicorn's default trusts loopback peers'
    X-Forwarded-Proto."""
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("forwarded_allow_ips", gunicorn_conf.forwarded_allow_ips)
    assert cfg.forwarded_allow_ips == []
