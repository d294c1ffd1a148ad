"""The sync lease across replicas: one run at a time, one scheduled run per interval, and a run
longer than the lease keeps it by renewal (SQLite here; the PostgreSQL twin is in
tests/integration/ha/test_sync_lease.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bridge.directory.model import DirectorySnapshot
from bridge.policy.loader import parse_policy
from bridge.store import db, lease
from bridge.store.models import SyncRun
from bridge.sync import schedule
from bridge.sync.runner import LOCK_NAME, SyncRunner
from bridge.sync.targets.store import StoreTarget
from tests.unit.conftest import make_snapshot

POLICY = parse_policy("""
roles:
  reader: {description: r, permissions: [view]}
rules:
  - {id: readers, group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [reader]}
""")


class SlowReader:
    """A directory whose read takes `delay` seconds (a long run without a real server)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.reads = 0

    def read(self, previous: DirectorySnapshot | None = None, *, full: bool = True) -> DirectorySnapshot:
        self.reads += 1
        time.sleep(self.delay)
        return make_snapshot({"ann": ("Readers",), "bob": ("Readers",)})


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(u)
    return u


def runner(url: str, owner: str | None = None, delay: float = 0.0, lock_ttl: float = 900.0) -> SyncRunner:
    eng = db.engine(url)
    return SyncRunner(SlowReader(delay), POLICY, [StoreTarget(eng)], eng, owner=owner, lock_ttl=lock_ttl)  # type: ignore[arg-type]


def runs(url: str) -> list[Any]:
    with db.session(db.engine(url)) as s:
        return list(s.scalars(select(SyncRun).order_by(SyncRun.id)).all())


def test_default_owner_differs_between_runners_in_one_process(url: str) -> None:
    # two schedulers in one process (or two containers with the same hostname and pid 1) must not
    # share an owner: a shared owner "renews" the other's lease and both run
    a, b = runner(url), runner(url)
    assert a.owner != b.owner


def test_run_longer_than_the_lease_keeps_it_and_blocks_the_other(url: str) -> None:
    slow = runner(url, "replica-a", delay=2.0, lock_ttl=0.6)
    other = runner(url, "replica-b")
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(report=slow.run(apply=True)))
    t.start()
    try:
        time.sleep(1.3)  # two lease lifetimes into the run
        assert lease.holder(slow.engine, LOCK_NAME) is not None
        assert lease.holder(slow.engine, LOCK_NAME)[0] == "replica-a"  # type: ignore[index]
        blocked = other.run(apply=True)
        assert blocked.status == "locked"
    finally:
        t.join(10)
    assert result["report"].status == "ok"
    assert lease.holder(slow.engine, LOCK_NAME) is None  # released at the end
    assert [r.owner for r in runs(url)] == ["replica-a"]


def test_renewal_keeps_acquired_at(url: str) -> None:
    eng = db.engine(url)
    assert lease.acquire(eng, "x", "a", 60)
    first = _acquired_at(eng, "x")
    time.sleep(0.05)
    assert lease.renew(eng, "x", "a", 60)
    assert _acquired_at(eng, "x") == first
    assert not lease.renew(eng, "x", "b", 60)  # renewal never takes a lease over


def _acquired_at(eng: Any, name: str) -> Any:
    from bridge.store.models import SyncLock

    with db.session(eng) as s:
        return s.get(SyncLock, name).acquired_at  # type: ignore[union-attr]


def test_renew_fails_after_takeover(url: str) -> None:
    eng = db.engine(url)
    assert lease.acquire(eng, "x", "a", -1)  # expired at once
    assert lease.acquire(eng, "x", "b", 60)
    assert not lease.renew(eng, "x", "a", 60)


def test_two_schedulers_run_once_per_interval(url: str) -> None:
    a, b = runner(url, "replica-a"), runner(url, "replica-b")
    interval = 1.0
    # both replicas tick in the same interval (b a little later): only the first runs
    ra = schedule.sync_job(a, interval)
    rb = schedule.sync_job(b, interval)
    assert ra is not None and ra.status == "ok"
    assert rb is None or rb.status == "locked"
    assert len(runs(url)) == 1
    time.sleep(interval + 0.1)
    # next interval: whoever ticks first runs, once
    rb2 = schedule.sync_job(b, interval)
    ra2 = schedule.sync_job(a, interval)
    statuses = [r.status if r else None for r in (rb2, ra2)]
    assert statuses.count("ok") + statuses.count("unchanged") == 1, statuses
    assert len(runs(url)) == 2


def test_scheduled_holder_keeps_its_slot_next_interval(url: str) -> None:
    a, b = runner(url, "replica-a"), runner(url, "replica-b")
    interval = 0.5
    assert schedule.sync_job(a, interval) is not None
    time.sleep(interval + 0.05)
    # a's own next tick runs again (it still holds the slot); b in the same interval does not
    assert schedule.sync_job(a, interval) is not None
    rb = schedule.sync_job(b, interval)
    assert rb is None
    assert [r.owner for r in runs(url)] == ["replica-a", "replica-a"]


def test_manual_apply_is_not_blocked_by_the_schedule_slot(url: str) -> None:
    a, cli = runner(url, "replica-a"), runner(url, "operator")
    assert schedule.sync_job(a, 60) is not None
    assert cli.run(apply=True).status in ("ok", "unchanged")


def test_a_run_whose_lease_was_taken_over_applies_nothing(url: str) -> None:
    """A run stalled past its lease (here: the directory read) and another replica took the lease
    over: the stalled run must not write next to the new holder (fencing at the apply)."""
    a = runner(url, owner="replica-a", delay=1.0, lock_ttl=0.3)

    def steal() -> None:
        time.sleep(0.15)  # A holds the lease and reads; B takes it over as if A's had expired
        from sqlalchemy import update

        from bridge.store.models import SyncLock
        with db.engine(url).begin() as conn:
            conn.execute(update(SyncLock).where(SyncLock.name == LOCK_NAME).values(owner="replica-b"))

    thief = threading.Thread(target=steal)
    thief.start()
    report = a.run(apply=True, full=True)
    thief.join()
    assert report.results == [], "the run applied changes after losing its lease"
    assert report.status != "ok" and any("lease" in str(e) for e in report.errors), report.errors
