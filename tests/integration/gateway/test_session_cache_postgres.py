"""The gateway's per-worker session cache on the dev stack's real PostgreSQL: two session stores over
one database stand for two web server workers (or two replicas).  Whatever one of them does to a
session -- logout, back-channel logout, idle sweep, renewal -- reaches the other's cache through
LISTEN/NOTIFY before its next request can use the old state; a cache whose listener lost the
database is not used; a change made behind the bridge's back (SQL by hand, no notification) lives
at most ``session_cache_seconds``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from bridge.store import db
from bridge.tokens.keys import KeyEncryptor
from bridge.web.gateway.sessions import GatewayLogin, SessionStore, Tokens, hash_id

pytestmark = pytest.mark.integration

#: how long a notification may take to reach the other worker's cache (measured: about a millisecond)
DELIVERY = 1.0


@pytest.fixture
def url(stack: dict[str, Any]) -> Iterator[str]:
    if "postgres" not in stack:
        pytest.skip("postgres is not part of this dev stack run")
    from pacs_devstack.postgres import private_schema

    with private_schema(stack, "gwc") as scoped:
        yield scoped


def _workers(url: str, cache_seconds: float = 30.0) -> tuple[SessionStore, SessionStore]:
    kek = KeyEncryptor.from_secret(KeyEncryptor.generate_secret())
    a = SessionStore.under_kek(db.engine(url), kek, cache_seconds=cache_seconds)
    b = SessionStore.under_kek(db.engine(url), kek, cache_seconds=cache_seconds)
    for store in (a, b):
        assert store.cache is not None
        store.cache.ensure_listening()
    deadline = time.monotonic() + 10
    while not (a.cache.live() and b.cache.live()):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the session cache listeners never started"
        time.sleep(0.01)
    return a, b


def _login(store: SessionStore, token: str = "pacs-token-1", **kw: Any) -> str:
    return store.create(subject_id="guid-alice", kc_sub="kc-alice", sid=kw.get("sid", "kc-sid"),
                        username="rad.alice", tokens=Tokens(token, "rt", "id"), token_exp=time.time() + 300,
                        lifetime_seconds=kw.get("lifetime", 3600))


def _within(what: Callable[[], bool], seconds: float = DELIVERY) -> float:
    """How long until ``what()`` holds (fails after ``seconds``)."""
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < seconds, "the other worker's cache still serves the old session"
        time.sleep(0.001)
    return time.monotonic() - start


def _sql(url: str, statement: str, **params: Any) -> None:
    eng = db.engine(url)
    with eng.begin() as conn:
        conn.execute(text(statement), params)
    eng.dispose()


def _cached(store: SessionStore, raw: str) -> GatewayLogin:
    """Read once (the row), then prove the next read is served from the cache: a row removed by hand,
    without a notification, is still seen."""
    found = store.get(raw)
    assert found is not None
    assert store.cache is not None and store.cache.lookup(hash_id(raw)) is not None
    return found


def test_a_logout_on_another_worker_reaches_this_workers_cache(url: str) -> None:
    a, b = _workers(url)
    raw = _login(b)
    _cached(a, raw)
    b.end(hash_id(raw))
    took = _within(lambda: a.get(raw) is None)
    assert took < DELIVERY


def test_a_back_channel_logout_on_another_worker_reaches_this_workers_cache(url: str) -> None:
    a, b = _workers(url)
    raw = _login(b, sid="kc-sid-bcl")
    _cached(a, raw)
    assert [e.id_hash for e in b.end_for(sid="kc-sid-bcl")] == [hash_id(raw)]
    _within(lambda: a.get(raw) is None)


def test_an_idle_sweep_on_another_worker_reaches_this_workers_cache(url: str) -> None:
    a, b = _workers(url)
    raw = _login(b)
    _cached(a, raw)
    _sql(url, "UPDATE gateway_sessions SET last_activity = last_activity - interval '2 hours'")
    assert [e.id_hash for e in b.expired(idle_seconds=900)] == [hash_id(raw)]
    _within(lambda: a.get(raw) is None)


def test_a_renewal_on_another_worker_gives_this_worker_the_new_token(url: str) -> None:
    """A role removed mid-session: the renewed token (without the role) must be the one proxied."""
    a, b = _workers(url)
    raw = _login(b, token="token-with-the-old-roles")
    assert _cached(a, raw).tokens.pacs_token == "token-with-the-old-roles"
    b.renew(hash_id(raw), Tokens("token-after-the-role-removal", "rt2", "id2"), time.time() + 300)
    _within(lambda: (s := a.get(raw)) is not None and s.tokens.pacs_token == "token-after-the-role-removal")


def test_a_cache_that_lost_its_listener_reads_the_row(url: str) -> None:
    """The listener's database connection is killed: until it listens again, nothing it might have
    missed is served from memory."""
    a, b = _workers(url)
    raw = _login(b)
    _cached(a, raw)
    assert a.cache is not None and a.cache.backend_pid is not None
    _sql(url, "SELECT pg_terminate_backend(:pid)", pid=a.cache.backend_pid)
    _within(lambda: not a.cache.live() or a.cache.lookup(hash_id(raw)) is None)  # type: ignore[union-attr]
    _sql(url, "DELETE FROM gateway_sessions")  # behind the bridge's back: no notification
    assert a.get(raw) is None


def test_a_row_removed_behind_the_bridges_back_lives_at_most_the_cache_age(url: str) -> None:
    """No notification (SQL by hand): the entry's age bound is the safety net."""
    a, b = _workers(url, cache_seconds=1.0)
    raw = _login(b)
    _cached(a, raw)
    _sql(url, "DELETE FROM gateway_sessions")
    assert a.get(raw) is not None  # still cached: the bound, not a notification, ends it
    time.sleep(1.1)
    assert a.get(raw) is None


def test_activity_seen_by_another_worker_is_read_before_an_idle_end(url: str) -> None:
    """This worker's copy says idle; the row (touched by the other worker) says active: ``fresh``
    reads the row, which is what the request path does before ending a session as idle."""
    a, b = _workers(url)
    raw = _login(b)
    cached = _cached(a, raw)
    later = cached.last_activity + 600
    b.touch(cached, later)
    assert a.get(raw).last_activity == cached.last_activity  # type: ignore[union-attr]
    assert a.get(raw, fresh=True).last_activity == pytest.approx(later)  # type: ignore[union-attr]
