"""Two bridge instances behind HAProxy on one PostgreSQL: both serve, a token from one is valid on
the other, and a SIGKILL of one costs fewer than 1 % of requests in the second it dies and none
after.  bench/ha.py measures the same at length and reports throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ha_helpers import mfa_tokens, restored, start, tools_auth, wait_states

from bridge.http import pinned_session
from pacs_devstack import ha_load
from pacs_devstack.bridge import SECOND

pytestmark = pytest.mark.integration

USERS = ("card.jon", "er.raj", "tech.wen")


@pytest.fixture(scope="module")
def subject_tokens(stack: dict[str, Any], ha: dict[str, Any]) -> list[str]:
    return mfa_tokens(stack, USERS)


def test_both_instances_are_up_and_share_keys(ha: dict[str, Any]) -> None:
    wait_states({"bridge": "UP", "bridge2": "UP"})
    http = pinned_session(ha["ca"])
    assert http.get(f"{ha['url']}/readyz", timeout=5).json() == {"status": "ready"}
    jwks = [http.get(f"{u}/jwks.json", timeout=5).json() for u in (ha["bridge"]["instance_url"],
                                                                     ha["bridge2"]["instance_url"], ha["url"])]
    assert jwks[0] == jwks[1] == jwks[2]
    # the public URL (issuer) is HAProxy's, on both instances
    meta = http.get(f"{ha['bridge2']['instance_url']}/.well-known/oauth-authorization-server", timeout=5).json()
    assert meta["issuer"] == ha["url"]


def test_a_token_issued_by_one_instance_is_valid_on_the_other(stack: dict[str, Any], ha: dict[str, Any],
                                                              subject_tokens: list[str]) -> None:
    http = pinned_session(ha["ca"])
    r = http.post(f"{ha['bridge']['instance_url']}/token", timeout=10, data={
        "grant_type": ha_load.EXCHANGE, "client_id": "pacs-viewer", "subject_token_type": ha_load.ACCESS_TOKEN,
        "subject_token": subject_tokens[0]})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    auth = tools_auth(stack)
    for url in (ha["bridge2"]["instance_url"], ha["url"]):
        got = http.post(f"{url}/introspect", data={"token": token}, auth=auth, timeout=10).json()
        assert got["active"] is True and got["iss"] == ha["url"]


def test_sigkill_of_one_instance_under_load(stack: dict[str, Any], ha: dict[str, Any],
                                            subject_tokens: list[str]) -> None:
    wait_states({"bridge": "UP", "bridge2": "UP"})
    target = ha_load.Target(ha["url"], ha["ca"], subject_tokens, introspect_auth=tools_auth(stack))
    killed: list[float] = []

    def during(elapsed: float) -> None:
        if elapsed >= 2.0 and not killed:
            import time

            killed.append(time.monotonic())
            SECOND.kill()

    with restored(stack, "bridge2"):
        samples = ha_load.drive(target, threads=4, seconds=6.0, max_requests=20_000, during=during)
        assert killed, "the load ended before the kill"
        k = killed[0]
        before = ha_load.summary([x for x in samples if x.start + x.ms / 1000 < k])
        in_flight = ha_load.in_flight(samples, k)
        dying = ha_load.summary(samples, since=k, until=k + 1.0)
        after = ha_load.summary(samples, since=k + 1.0)
        assert before["failed"] == 0, before
        assert dying["requests"] > 0 and after["requests"] > 0, (dying, after)
        assert dying["failure_rate"] < 0.01, dying
        assert after["failed"] == 0, after
        # what was running on the victim at the SIGKILL: only exchanges may fail (nobody may retry
        # them for the client); reads and the audit intake are retried on the other instance
        assert set(in_flight["failed_kinds"]) <= {"token"}, in_flight
        assert in_flight["failed"] <= 4, in_flight  # at most one per client thread
        wait_states({"bridge2": "DOWN"})
    # restored: the instance is back on its port and HAProxy sends it requests again
    start("bridge2", stack)
    wait_states({"bridge": "UP", "bridge2": "UP"})


def test_haproxy_forwards_the_client_address(ha: dict[str, Any]) -> None:
    import time

    from pacs_devstack import process

    http = pinned_session(ha["ca"])
    for _ in range(4):  # round robin: both instances see one
        assert http.get(f"{ha['url']}/jwks.json", headers={"X-Forwarded-For": "192.0.2.7"}, timeout=5).ok
    time.sleep(0.5)
    for name in ("bridge", "bridge2"):
        log = process.load(name).log  # type: ignore[union-attr]
        lines = [x for x in Path(log).read_text(encoding="utf-8", errors="replace").splitlines()
                 if '"GET /jwks.json"' in x]
        # HAProxy adds its own X-Forwarded-For line with the address it saw (the server joins it
        # after the client's own, untrusted one: the last hop is HAProxy's, see web.trusted_proxy_hops)
        assert lines and lines[-1].endswith("xff=127.0.0.1"), (name, lines[-3:])
