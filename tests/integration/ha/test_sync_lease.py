"""Scheduled sync across two `serve` instances on the stack's PostgreSQL, with the real Samba AD:
exactly one run per interval, and a run longer than the lease keeps it by renewal while the other
instance keeps trying and never starts a second run."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from ha_helpers import need, private_schema, sync_runner
from sqlalchemy import select

from bridge.store import lease
from bridge.store.db import session
from bridge.store.models import SyncRun
from bridge.sync import schedule
from bridge.sync.runner import LOCK_NAME

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(stack: dict[str, Any]) -> Any:
    need(stack, "postgres", "samba")
    with private_schema(stack) as url:
        yield url


def _runs(runner: Any) -> list[SyncRun]:
    with session(runner.engine) as s:
        return list(s.scalars(select(SyncRun).order_by(SyncRun.started_at)).all())


def test_two_schedulers_run_exactly_once_per_interval(stack: dict[str, Any], pg: str) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    interval, length = 3.0, 10.5
    replicas = [sync_runner(stack, pg, f"serve-{n}") for n in ("a", "b")]
    schedulers = []
    t0 = time.monotonic()
    for i, runner in enumerate(replicas):
        sched = BackgroundScheduler()
        # the same job `pacs-bridge serve` schedules; the replicas tick 1 s apart
        sched.add_job(schedule.sync_job, "interval", args=(runner, interval), seconds=interval,
                      max_instances=1, coalesce=True, id="directory-sync")
        sched.start()
        schedulers.append(sched)
        if i == 0:
            time.sleep(1.0)
    try:
        time.sleep(max(0.0, length - (time.monotonic() - t0)))
    finally:
        for sched in schedulers:
            sched.shutdown(wait=True)
    runs = _runs(replicas[0])
    assert all(r.status in ("ok", "unchanged") for r in runs), [(r.status, r.errors) for r in runs]
    starts = [r.started_at.timestamp() for r in runs]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # ticks at 3, 6, 9 s (replica a) and 4, 7, 10 s (replica b): one run per interval, 3 in all
    assert len(runs) == 3, [(r.owner, r.started_at) for r in runs]
    assert all(g > interval * 0.8 for g in gaps), gaps
    for a, b in itertools.pairwise(runs):
        assert a.finished_at is not None and a.finished_at <= b.started_at  # never two at once


def test_run_longer_than_the_lease_is_renewed_and_not_doubled(stack: dict[str, Any], pg: str) -> None:
    ttl = 1.0
    slow = sync_runner(stack, pg, "serve-a", lock_ttl=ttl)
    other = sync_runner(stack, pg, "serve-b", lock_ttl=ttl)
    result: dict[str, Any] = {}

    def slow_progress(step: str) -> None:  # each step of the real run takes a while longer
        time.sleep(1.2 * ttl)

    t = threading.Thread(target=lambda: result.update(report=slow.run(apply=True, progress=slow_progress)))
    t.start()
    attempts: list[str] = []
    holders: list[Any] = []
    try:
        time.sleep(0.3)
        while t.is_alive():
            holders.append(lease.holder(other.engine, LOCK_NAME))
            attempts.append(other.run(apply=True).status)
            time.sleep(0.25)
    finally:
        t.join(60)
    report = result["report"]
    assert report.status in ("ok", "unchanged"), report.errors
    assert report.duration > 2 * ttl  # the run outlived its lease twice over
    assert attempts and set(attempts) == {"locked"}, attempts
    assert {h[0] for h in holders if h} == {"serve-a"}
    assert [r.owner for r in _runs(slow)] == ["serve-a"]
    assert lease.holder(slow.engine, LOCK_NAME) is None  # released at the end
