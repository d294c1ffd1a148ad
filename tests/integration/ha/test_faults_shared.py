"""Faults of servers the whole suite shares, each really stopped and restarted mid-run through the
dev stack's process control; `restored` brings each back (ready, and Keycloak re-seeded) whatever
happens, because the rest of the session uses the same stack.

- Keycloak down: the exchange answers 503 with Retry-After when it needs Keycloak's keys (never
  500, never invalid_grant), keeps working with keys it has, and nothing is revoked, not even by
  a sync run that finds Keycloak unreachable.
- PostgreSQL restarted under load: every answer is a success or a 503 (HAProxy's or the bridge's),
  never a 500; afterwards the audit chain verifies and every acknowledged event is in it.
- The directory (Samba AD) down while a sync reads it: the run fails, nothing is applied.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from ha_helpers import mfa_tokens, need, private_schema, restored, start, stop, sync_runner, tools_auth, wait_states
from sqlalchemy import func, select

from bridge.http import pinned_session
from pacs_devstack import ha_load

pytestmark = pytest.mark.integration


def _exchange(http: Any, url: str, subject: str) -> Any:
    return http.post(f"{url}/token", timeout=15, data={
        "grant_type": ha_load.EXCHANGE, "client_id": "pacs-viewer", "subject_token_type": ha_load.ACCESS_TOKEN,
        "subject_token": subject})


def _settings(stack: dict[str, Any]) -> Any:
    from bridge.config import load_config

    return load_config(stack["bridge"]["config"])


def test_keycloak_down_exchange_is_503_never_500_and_nothing_is_revoked(stack: dict[str, Any],
                                                                        ha: dict[str, Any]) -> None:
    need(stack, "keycloak", "samba")
    from bridge.sync.factory import build_runner
    from bridge.web.app import create_app

    subjects = mfa_tokens(stack, ("card.liam", "rad.res.gus"))
    started = int(time.time())
    http = pinned_session(ha["ca"])
    issued = []
    for _ in range(8):  # every worker of both instances has Keycloak's keys now (round robin)
        r = _exchange(http, ha["url"], subjects[0])
        assert r.status_code == 200, r.text
        issued.append(r.json()["access_token"])
    auth = tools_auth(stack)
    settings = _settings(stack)
    fresh = create_app(settings).test_client()  # a just-started instance: no Keycloak keys yet
    with restored(stack, "keycloak"):
        stop("keycloak")
        r = fresh.post("/token", data={"grant_type": ha_load.EXCHANGE, "client_id": "pacs-viewer",
                                       "subject_token_type": ha_load.ACCESS_TOKEN, "subject_token": subjects[1]})
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.json["error"] == "temporarily_unavailable" and int(r.headers["Retry-After"]) >= 1
        for subject in subjects * 4:  # the running instances: cached keys or 503, never 500 or 400
            r = _exchange(http, ha["url"], subject)
            assert r.status_code in (200, 503), (r.status_code, r.text)
            if r.status_code == 503:
                assert r.headers.get("Retry-After")
        # a scheduled sync now finds Keycloak unreachable: it must not revoke anybody
        report = build_runner(settings).run(apply=True)
        assert report.status in ("partial", "failed"), report.status
        assert any("keycloak" in str(e).lower() for e in report.errors), report.errors
        for token in issued:
            got = http.post(f"{ha['url']}/introspect", data={"token": token}, auth=auth, timeout=10).json()
            assert got["active"] is True, got
        # a watermark another test left earlier in the session (card.liam is shared) is no revocation
        # by this sync: only one set since this test started would be
        revoked_now = {s["sub"] for s in http.get(f"{ha['url']}/revocations", timeout=10).json()["subjects"]
                       if s["not_before"] >= started}
        assert got["sub"] not in revoked_now
    # Keycloak is back (new realm keys): a new login exchanges again once the key refresh is due
    subject = mfa_tokens(stack, ("card.liam",))[0]
    deadline = time.monotonic() + 30
    while True:
        r = _exchange(http, ha["url"], subject)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
        time.sleep(min(float(r.headers["Retry-After"]), 2.0))
    assert r.status_code == 200, r.text


def test_postgres_restarted_under_load(stack: dict[str, Any], ha: dict[str, Any]) -> None:
    need(stack, "keycloak", "postgres")
    from bridge.audit.store import open_store
    from bridge.core.audit_events import format_time, utcnow
    from bridge.store.db import engine
    from pacs_devstack.service import StackContext

    subjects = mfa_tokens(stack, ("card.jon", "er.raj"))
    ctx = StackContext(ca_file=Path(ha["ca"]))
    target = ha_load.Target(ha["url"], ha["ca"], subjects, introspect_auth=tools_auth(stack),
                            ingest_token=ctx.secret(stack["bridge"]["audit_ingest_secret"]),
                            correlation_id=f"ha-pg-{int(time.time())}")
    since = format_time(utcnow())
    phases: dict[str, float] = {}

    def fault(elapsed: float) -> None:
        if elapsed >= 2.0 and "down" not in phases:
            phases["down"] = time.monotonic()
            stop("postgres")
        elif elapsed >= 5.0 and "up" not in phases:
            start("postgres", stack)
            phases["up"] = time.monotonic()

    with restored(stack, "postgres"):
        samples = ha_load.drive(target, threads=3, seconds=14.0, max_requests=20_000, during=fault)
    assert "up" in phases, "the load ended before PostgreSQL was back"
    statuses = {s.status for s in samples}
    assert statuses <= {200, 202, 503}, ha_load.summary(samples)["statuses"]
    down = ha_load.summary(samples, since=phases["down"], until=phases["up"])
    assert down["statuses"].get("503", 0) > 0, down  # the outage was seen, as 503s
    wait_states({"bridge": "UP", "bridge2": "UP"})
    tail = ha_load.summary(samples, since=samples[-1].start - 2.0)
    assert tail["failed"] == 0, tail  # recovered
    # nothing half-written: the chain verifies and every acknowledged event is in it
    settings = _settings(stack)
    eng = engine(settings.store.url)
    deadline = time.monotonic() + 15
    while True:
        missing = ha_load.missing_acknowledged(eng, samples, since)
        if (missing["intake"] == 0 and missing["exchanges"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert missing["intake"] == 0 and missing["exchanges"] == 0, missing
    assert missing["intake_acknowledged"] > 0 and missing["exchanges_acknowledged"] > 0, missing
    report = open_store(settings, eng, signing=False).verify()
    assert report.ok, report


def test_directory_down_mid_sync_applies_nothing(stack: dict[str, Any]) -> None:
    need(stack, "samba", "postgres")
    from bridge.store.db import session
    from bridge.store.models import RoleAssignment, SubjectRevocation

    with private_schema(stack) as url:
        runner = sync_runner(stack, url, "serve-a")
        first = runner.run(apply=True, full=True)
        assert first.status == "ok", first.errors
        with session(runner.engine) as s:
            before = sorted((a.subject_id, a.role) for a in s.scalars(select(RoleAssignment)))
        assert before

        def directory_goes_down(step: str) -> None:
            if step == "reading the directory":
                stop("samba")

        with restored(stack, "samba"):
            second = runner.run(apply=True, full=True, progress=directory_goes_down)
            assert second.status == "failed", (second.status, second.errors)
            assert "directory unavailable" in str(second.errors)
        with session(runner.engine) as s:
            after = sorted((a.subject_id, a.role) for a in s.scalars(select(RoleAssignment)))
            revoked = s.scalar(select(func.count()).select_from(SubjectRevocation))
        assert after == before and revoked == 0
        # the directory is back: the next run changes nothing either (it was never half-applied)
        third = runner.run(apply=True, full=True)
        counts = third.plan.counts() if third.plan else {}
        assert third.status == "ok" and counts.get("adds") == 0 and counts.get("removals") == 0, counts
