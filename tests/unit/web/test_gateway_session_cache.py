"""The per-worker gateway session cache (bridge/web/gateway/session_cache.py): it serves only while its
listener is live, never keeps what a notification invalidated, ages out, and drops everything
when its listener loses the database.  The real PostgreSQL notifications are exercised by
tests/integration/gateway/test_session_cache_postgres.py."""

from __future__ import annotations

import os
import threading
import time

from bridge.web.gateway import session_cache as sc
from bridge.web.gateway.session_cache import FLUSH_ALL, SessionCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _live(clock: Clock | None = None, max_age: float = 5.0) -> SessionCache[str]:
    cache: SessionCache[str] = SessionCache(lambda: None, max_age=max_age, clock=clock or Clock())
    cache._pid = os.getpid()
    cache._set_live(True)
    return cache


def test_a_cache_whose_listener_is_not_live_serves_nothing() -> None:
    cache: SessionCache[str] = SessionCache(lambda: None)
    cache.put("h", "session", cache.generation())
    assert cache.lookup("h") is None


def test_a_live_cache_serves_what_it_was_given() -> None:
    cache = _live()
    cache.put("h", "session", cache.generation())
    assert cache.lookup("h") == "session"


def test_a_read_that_raced_a_notification_is_not_kept() -> None:
    """The row was read before the logout committed; its notification came in during the read."""
    cache = _live()
    before = cache.generation()
    cache.invalidate("h")  # the logout's notification
    cache.put("h", "stale session", before)
    assert cache.lookup("h") is None


def test_a_notification_drops_its_session_and_flush_all_drops_every_one() -> None:
    cache = _live()
    for h in ("a", "b", "c"):
        cache.put(h, h, cache.generation())
    cache.invalidate("a")
    assert cache.lookup("a") is None and cache.lookup("b") == "b"
    cache.invalidate(FLUSH_ALL)
    assert cache.lookup("b") is None and cache.lookup("c") is None


def test_an_entry_ages_out() -> None:
    clock = Clock()
    cache = _live(clock, max_age=5.0)
    cache.put("h", "session", cache.generation())
    clock.now += 4.9
    assert cache.lookup("h") == "session"
    clock.now += 0.2
    assert cache.lookup("h") is None


def test_replace_keeps_the_entry_age_and_adds_nothing() -> None:
    clock = Clock()
    cache = _live(clock, max_age=5.0)
    cache.put("h", "old", cache.generation())
    clock.now += 3
    cache.replace("h", "touched")
    cache.replace("absent", "x")
    assert cache.lookup("h") == "touched" and cache.lookup("absent") is None
    clock.now += 2.1
    assert cache.lookup("h") is None


def test_a_forked_worker_does_not_use_its_parents_cache() -> None:
    cache = _live()
    cache.put("h", "session", cache.generation())
    cache._pid = os.getpid() + 1  # as seen from a child worker forked after the cache filled
    assert cache.lookup("h") is None


def test_losing_the_listener_empties_the_cache() -> None:
    cache = _live()
    cache.put("h", "session", cache.generation())
    cache._set_live(False)
    cache._set_live(True)
    assert cache.lookup("h") is None


def test_the_cache_is_bounded() -> None:
    cache = _live()
    for i in range(sc.MAX_ENTRIES + 1):
        cache.put(str(i), "s", cache.generation())
    assert len(cache._entries) <= sc.MAX_ENTRIES


def test_a_listener_that_cannot_connect_leaves_the_cache_unused() -> None:
    attempts: list[float] = []

    def refuse() -> None:
        attempts.append(time.monotonic())
        raise OSError("database down")

    cache: SessionCache[str] = SessionCache(refuse, retry_after=0.05)
    cache.ensure_listening()
    deadline = time.monotonic() + 2
    while len(attempts) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    cache.put("h", "session", cache.generation())
    assert len(attempts) >= 2 and not cache.live() and cache.lookup("h") is None
    cache.stop()


class _FakeNotify:
    def __init__(self, payload: str):
        self.payload = payload


class _FakeDbapi:
    """A psycopg2-like connection: statements recorded, its own ``pg_notify`` delivered back (unless
    ``swallow``: a pooler in transaction mode), other notifications handed in by the test."""

    def __init__(self, swallow: bool = False) -> None:
        self.r, self.w = os.pipe()
        self.notifies: list[_FakeNotify] = []
        self.autocommit = False
        self.executed: list[str] = []
        self.swallow = swallow
        self.lock = threading.Lock()

    def fileno(self) -> int:
        return self.r

    def cursor(self) -> _FakeDbapi:
        return self

    def execute(self, sql: str, params: tuple[str, ...] = ()) -> None:
        self.executed.append(sql)
        if sql.startswith("SELECT pg_notify") and not self.swallow:
            self.send(params[1])

    def poll(self) -> None:
        os.read(self.r, 1024)

    def send(self, payload: str) -> None:
        self.notifies.append(_FakeNotify(payload))
        os.write(self.w, b"!")


class _FakeConn:
    def __init__(self, dbapi: _FakeDbapi):
        self.dbapi_connection = dbapi

    def invalidate(self) -> None:
        pass


def test_the_listener_listens_then_empties_the_cache_and_applies_notifications() -> None:
    dbapi = _FakeDbapi()
    cache: SessionCache[str] = SessionCache(lambda: _FakeConn(dbapi), ping_every=0.05)
    cache.ensure_listening()
    deadline = time.monotonic() + 2
    while not cache.live() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.live() and dbapi.autocommit and dbapi.executed[0] == f"LISTEN {sc.CHANNEL}"
    cache.put("h", "session", cache.generation())
    assert cache.lookup("h") == "session"
    dbapi.send("h")
    deadline = time.monotonic() + 2
    while cache.lookup("h") is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cache.lookup("h") is None
    time.sleep(0.12)
    pings = sum(1 for q in dbapi.executed if q.startswith("SELECT pg_notify"))
    assert pings >= 2 and cache.live()  # it pinged itself while quiet, and the pings came back
    dbapi.send(f"{sc.PING_PREFIX}another-worker")  # another worker's ping invalidates nothing
    cache.put("k", "kept", cache.generation())
    time.sleep(0.05)
    assert cache.lookup("k") == "kept"
    cache.stop()


def test_a_listener_whose_notifications_never_arrive_is_never_live() -> None:
    """LISTEN and queries succeed but notifications are dropped (a pooler in transaction mode): the
    cache must not be used, or a logout elsewhere would wait for the entries to age out."""
    dbapi = _FakeDbapi(swallow=True)
    cache: SessionCache[str] = SessionCache(lambda: _FakeConn(dbapi), ping_every=0.05, retry_after=0.05)
    cache.ensure_listening()
    time.sleep(0.4)
    cache.put("h", "session", cache.generation())
    assert not cache.live() and cache.lookup("h") is None
    cache.stop()
