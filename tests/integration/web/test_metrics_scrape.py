"""/metrics of the running dev-stack bridge: one scrape reports the requests of both web server
workers; a scraper outside the allow-list is refused, and the refusal is in the audit trail."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.audit.store import open_store
from bridge.config import load_config
from bridge.http import pinned_session
from pacs_devstack.bridge import WORKERS
from tests.integration.web.conftest import _PID, bridge_info

pytestmark = pytest.mark.integration


def _value(text: str, endpoint: str, status: str) -> float:
    m = re.search(rf'^pacs_bridge_http_requests_total\{{endpoint="{re.escape(endpoint)}",method="GET",'
                  rf'status="{status}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_scrape_sums_both_workers(stack: dict[str, Any]) -> None:
    info = bridge_info(stack)
    # one instance: behind HAProxy the public URL reaches either instance, and each instance reports
    # its own workers only (a site scrapes each instance, docs/configuration.md)
    url, ca = info.get("instance_url") or info["url"], stack["ca"]["file"]
    log = Path(info["config"]).with_name("server.log")
    probe = f"/metrics-probe-{secrets.token_hex(4)}"  # an unmatched path: nobody else requests it
    with pinned_session(ca) as s:
        before = _value(s.get(url + "/metrics", timeout=10).text, "unmatched", "404")

    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> int:
        with pinned_session(ca) as s:
            return s.get(url + probe, timeout=30).status_code

    def pids() -> set[str]:
        return {m.group(1) for line in log.read_text(errors="replace").splitlines()
                if (m := _PID.match(line)) and m.group(3) == probe}

    sent = 0
    with ThreadPoolExecutor(4) as pool:
        while sent < 24 or (len(pids()) < WORKERS and sent < 200):  # until both workers answered
            assert set(pool.map(one, range(8))) == {404}
            sent += 8
    assert len(pids()) == WORKERS, f"both workers must have answered the probe: {pids()}"

    # every scrape (whichever worker answers it) sees the sum of both
    seen = set()
    for _ in range(6):
        time.sleep(0.3)  # /metrics is itself limited (5/second per address)
        with pinned_session(ca) as s:
            resp = s.get(url + "/metrics", timeout=10)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        seen.add(_value(resp.text, "unmatched", "404") - before)
    assert seen == {float(sent)}


def test_outside_the_allow_list_is_refused_and_audited(stack: dict[str, Any], start_web_server: Any) -> None:
    info = bridge_info(stack)
    g = start_web_server({"PACS_BRIDGE_WEB__METRICS__ALLOW": '["10.99.0.0/16"]'})
    t0 = time.time()
    codes = g.get_many("/metrics", 3)  # (below the 5/second limit of /metrics)
    assert codes == [403] * 3
    with g.session() as s:
        body = s.get(g.url + "/metrics", timeout=10).text
    assert "pacs_bridge" not in body

    settings = load_config(info["config"])
    store = open_store(settings, signing=False)
    deadline = time.time() + 10
    rows: list[dict[str, Any]] = []
    while time.time() < deadline and len(rows) < 4:
        rows = [r for r in store.tail(200)
                if r["type"] == "access.denied" and r["client_id"] == "metrics" and r["time"] >= _iso(t0 - 1)]
        time.sleep(0.3)
    assert len(rows) >= 4, rows
    assert {r["network_address"] for r in rows} == {"127.0.0.1"}


def _iso(t: float) -> str:
    import datetime as dt

    from bridge.core.audit_events import format_time

    return format_time(dt.datetime.fromtimestamp(t, dt.UTC))
