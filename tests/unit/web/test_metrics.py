"""/metrics: who may scrape (loopback / allow-list / bearer token), and refusals are audited."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core.audit_codes import AuditEventType
from tests.unit.web.test_client_address import XFF, last_event, make

TOKEN = "metrics-token-0123456789abcdef"


def scrape(env: dict[str, Any], peer: str = "127.0.0.1", path: str = "/metrics", method: str = "GET",
           **headers: str) -> Any:
    return env["client"].open(path, method=method, headers=headers, environ_base={"REMOTE_ADDR": peer})


def test_loopback_may_scrape_and_sees_request_counters(tmp_path) -> None:
    env = make(tmp_path)
    env["client"].get("/jwks.json", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    resp = scrape(env)
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    body = resp.get_data(as_text=True)
    assert 'pacs_bridge_http_requests_total{endpoint="tokens.jwks",method="GET",status="200"}' in body
    assert "pacs_bridge_http_request_duration_seconds_bucket" in body
    assert scrape(env, peer="::1").status_code == 200


@pytest.mark.parametrize("peer", ["192.0.2.1", "10.0.0.1", "::ffff:192.0.2.1", "2001:db8::1"])
def test_other_addresses_are_refused_and_audited(tmp_path, peer: str) -> None:
    env = make(tmp_path)
    resp = scrape(env, peer=peer)
    assert resp.status_code == 403
    assert "pacs_bridge" not in resp.get_data(as_text=True)
    row = last_event(env)
    assert row["type"] == AuditEventType.ACCESS_DENIED.value
    assert row["client_id"] == "metrics"


def test_ipv4_mapped_loopback_counts_as_loopback(tmp_path) -> None:
    assert scrape(make(tmp_path), peer="::ffff:127.0.0.1").status_code == 200


def test_forwarded_loopback_is_not_loopback_when_the_proxy_is(tmp_path) -> None:
    # hops=1: the proxy on 127.0.0.1 forwards a remote client; the client is what counts
    env = make(tmp_path, hops=1)
    assert scrape(env, **{XFF: "203.0.113.5"}).status_code == 403
    assert last_event(env)["network_address"] == "203.0.113.5"
    # a client forging "127.0.0.1" in front of what the proxy appended gains nothing
    assert scrape(env, **{XFF: "127.0.0.1, 203.0.113.5"}).status_code == 403


def test_forged_header_without_trusted_hops_cannot_claim_loopback(tmp_path) -> None:
    env = make(tmp_path, hops=0)
    assert scrape(env, peer="203.0.113.5", **{XFF: "127.0.0.1"}).status_code == 403


def test_allow_list(tmp_path) -> None:
    env = make(tmp_path, metrics={"allow": ["10.20.0.0/16"]})
    assert scrape(env, peer="10.20.3.4").status_code == 200
    assert scrape(env, peer="10.21.0.1").status_code == 403
    assert scrape(env, peer="127.0.0.1").status_code == 403  # the list replaces the default


def test_bearer_token_from_anywhere(tmp_path) -> None:
    secret_file = tmp_path / "metrics.token"
    secret_file.write_text(TOKEN + "\n")
    env = make(tmp_path, metrics={"allow": [], "bearer_token_file": str(secret_file)})
    assert scrape(env, peer="192.0.2.9", Authorization=f"Bearer {TOKEN}").status_code == 200
    assert scrape(env, peer="192.0.2.9", Authorization=f"bearer {TOKEN}").status_code == 200
    assert scrape(env, peer="192.0.2.9").status_code == 403


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", f"Bearer {TOKEN.upper()}", "Bearer ", "Bearer",
    TOKEN,
])
def test_wrong_token_is_refused_even_from_an_allowed_address(tmp_path, header: str) -> None:
    env = make(tmp_path, metrics={"bearer_token": TOKEN})
    resp = scrape(env, peer="127.0.0.1", Authorization=header)
    assert resp.status_code == 403
    assert last_event(env)["type"] == AuditEventType.ACCESS_DENIED.value


def test_a_token_when_none_is_configured_is_refused(tmp_path) -> None:
    env = make(tmp_path)
    assert scrape(env, peer="192.0.2.9", Authorization=f"Bearer {TOKEN}").status_code == 403


def test_head_trailing_slash_and_encoded_path(tmp_path) -> None:
    env = make(tmp_path)
    assert scrape(env, peer="192.0.2.9", method="HEAD").status_code == 403
    assert scrape(env, peer="127.0.0.1", method="HEAD").status_code == 200
    assert scrape(env, peer="192.0.2.9", path="/metrics/").status_code == 404
    assert scrape(env, peer="192.0.2.9", path="/%6detrics").status_code in (403, 404)
    assert scrape(env, peer="192.0.2.9", path="/METRICS").status_code == 404
    assert scrape(env, peer="127.0.0.1", method="POST").status_code == 405


def test_disabled_means_no_route(tmp_path) -> None:
    env = make(tmp_path, metrics={"enabled": False})
    assert scrape(env).status_code == 404


def test_unmatched_paths_do_not_create_series(tmp_path) -> None:
    env = make(tmp_path)
    for i in range(5):
        env["client"].get(f"/no-such-{i}", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    body = scrape(env).get_data(as_text=True)
    assert "no-such" not in body
    assert 'endpoint="unmatched"' in body


def test_multiprocess_registry_sums_the_files_of_every_worker(tmp_path, monkeypatch) -> None:
    """The aggregation itself, with files two worker processes wrote (the real 2-worker web server is
    in tests/integration/web/test_metrics.py)."""
    import subprocess
    import sys

    d = tmp_path / "prom"
    d.mkdir()
    code = ("from bridge.web import metrics; "
            "metrics.REQUESTS.labels('tokens.jwks', 'GET', '200').inc(3)")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], check=True,
                       env={"PROMETHEUS_MULTIPROC_DIR": str(d), "PYTHONPATH": ":".join(sys.path)})
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(d))
    from prometheus_client import generate_latest

    from bridge.web.metrics import registry

    text = generate_latest(registry()).decode()
    assert 'pacs_bridge_http_requests_total{endpoint="tokens.jwks",method="GET",status="200"} 6.0' in text
