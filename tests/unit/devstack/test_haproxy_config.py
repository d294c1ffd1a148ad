"""The dev stack's HAProxy configuration: what the failover and TLS rules depend on is there, and
HAProxy itself accepts the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pacs_devstack.haproxy import haproxy_config


def _config(tmp_path: Path) -> str:
    return haproxy_config(port=18443, cert_pem=tmp_path / "tls.pem", ca_file=tmp_path / "ca.pem",
                          backends={"bridge": 18001, "bridge2": 18002}, admin_socket=tmp_path / "admin.sock")


def test_failover_and_retry_rules(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert "option redispatch 1" in cfg and "retries 3" in cfg
    # sent requests are retried elsewhere only when idempotent
    assert "http-request disable-l7-retry if !METH_GET !{ path /introspect /audit/events /revoke /token }" in cfg
    assert "http-check send meth GET uri /readyz" in cfg and "http-check expect status 200" in cfg
    assert "inter 500ms" in cfg and "fall 2" in cfg
    assert "option http-server-close" in cfg  # no reuse of an idle connection to a dead instance
    assert "server bridge 127.0.0.1:18001" in cfg and "server bridge2 127.0.0.1:18002" in cfg


def test_tls_both_ways_and_forwarded_headers(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert f"bind 127.0.0.1:18443 ssl crt {tmp_path / 'tls.pem'}" in cfg
    assert f"ssl verify required sni str(localhost) verifyhost localhost ca-file {tmp_path / 'ca.pem'}" in cfg
    assert "verify none" not in cfg
    assert "option forwardfor" in cfg and "X-Forwarded-Proto https" in cfg
    assert "%HPO" in cfg and not re.search(r"%(r|HU|HQ)\b", cfg)  # no query string in the log


def test_haproxy_accepts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (the dev stack installs it)")
    from pacs_devstack.tls import issue

    monkeypatch.setenv("PACS_BRIDGE_DEVSTACK_DIR", str(tmp_path / "state"))
    pair = issue("haproxy-unit")
    (tmp_path / "tls.pem").write_bytes(pair.cert.read_bytes() + pair.key.read_bytes())
    (tmp_path / "ca.pem").write_bytes(pair.ca.read_bytes())
    (tmp_path / "h.cfg").write_text(_config(tmp_path))
    res = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_browsers_are_told_to_stay_on_https(tmp_path: Path) -> None:
    """The front listens on TLS only, but a browser typing the bridge's name would try http:// first,
    where anyone on the path can answer: HSTS makes it go to https:// directly after the first visit."""
    cfg = _config(tmp_path)
    assert re.search(r"http-response set-header Strict-Transport-Security \"max-age=\d{8,}", cfg), cfg
