"""Rate limits shared by web server workers through the dev stack's Redis (TLS, password).

A 2-worker bridge with ``/revocations`` limited to 6 per hour per client address gets 20 requests,
4 at a time on fresh connections: both workers answer (access log pids) and exactly 6 succeed.
The control run keeps each worker's counters in memory: then more than 6 succeed, which is the
lock-out-or-bypass arithmetic the shared store exists to avoid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacs_devstack import redis as redis_service
from pacs_devstack.service import StackContext

pytestmark = pytest.mark.integration

LIMIT = 6
ENV = {"PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_REVOCATIONS": f"{LIMIT}/hour"}


def test_n_plus_first_request_across_workers_is_refused(start_web_server: Any) -> None:
    g = start_web_server(ENV)
    codes = g.get_many("/revocations", 20)
    served = g.pids("/revocations")
    assert len(served) == 2, f"both workers must answer; access log pids: {served}"
    assert codes.count(200) == LIMIT, codes
    assert codes.count(429) == 20 - LIMIT


def test_the_counters_are_in_redis(stack: dict[str, Any], start_web_server: Any) -> None:
    g = start_web_server({**ENV, "PACS_BRIDGE_FLASK_RATELIMIT_KEY_PREFIX": "test-redis-keys"})
    assert g.get_many("/revocations", 2) == [200, 200]
    conn = redis_service.SERVICE.client(StackContext(ca_file=Path(stack["ca"]["file"])))
    try:
        keys = [k.decode() for k in conn.scan_iter("*test-redis-keys*")]
    finally:
        conn.close()
    assert keys and all("127.0.0.1" in k for k in keys), keys


def test_control_in_memory_counters_are_per_worker(start_web_server: Any) -> None:
    g = start_web_server({**ENV, "PACS_BRIDGE_FLASK_RATELIMIT_STORAGE_URI": "memory://",
                        "PACS_BRIDGE_FLASK_RATELIMIT_STORAGE_OPTIONS": "{}"})
    codes = g.get_many("/revocations", 20)
    served = g.pids("/revocations")
    if len(served) < 2:
        pytest.fail(f"only one worker answered, the control proves nothing: {served}")
    assert codes.count(200) > LIMIT, codes
    assert codes.count(200) == sum(min(LIMIT, len(s)) for s in served.values())
