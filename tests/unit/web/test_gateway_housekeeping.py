"""The gateway's housekeeping thread (bridge/web/gateway/maintenance.py) and what stays on the
request path: a request never sweeps nor reloads the watermarks itself while the thread keeps
them fresh, yet a logout, back-channel logout or revocation in another worker (another app on the
same database) counts at the very next request, and the thread falls back safely."""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import BASE, PREFIX, FakeKeycloak, Gateway, logout_token
from sqlalchemy import select, text

from bridge.store.db import engine, session
from bridge.store.models import GatewaySession, RoleAssignment
from bridge.tokens.store import SqlRevocationStore
from bridge.web.app import create_app
from bridge.web.gateway import maintenance, views
from bridge.web.tokens import build_service


@pytest.fixture
def g(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


def _age_all(g: Gateway, seconds: float) -> None:
    with session(engine(g.db_url)) as s:
        for row in s.scalars(select(GatewaySession)).all():
            row.last_activity = datetime.fromtimestamp(row.last_activity.timestamp() - seconds, UTC)


class Worker:
    """A second app on the same database and key (another web server worker or bridge replica)."""

    def __init__(self, g: Gateway):
        service = build_service(g.settings)
        service.keycloak = g.service.keycloak
        service.audit = g.service.audit
        self.app = create_app(g.settings, token_service=service, gateway_transport=g.orthanc,
                              config={"PACS_BRIDGE_RATE_LOGIN": "1000/minute"})
        self.gw: views.Gateway = self.app.extensions[views.EXTENSION]
        self.gw.keycloak = FakeKeycloak()  # type: ignore[assignment]
        self.client = self.app.test_client()

    def get(self, path: str, raw: str) -> Any:
        self.client.set_cookie(views.COOKIE, raw, domain="bridge.test", path="/", secure=True)
        return self.client.get(path, base_url=BASE)


def test_a_request_does_not_sweep_the_housekeeping_thread_does(g: Gateway) -> None:
    """The sweep (a query, then Keycloak calls per session) is off the request path."""
    idle = g.log_in(sid="kc-sid-idle")
    _age_all(g, g.settings.gateway.idle_timeout_seconds + 5)
    g.log_in(sid="kc-sid-live")  # the client's cookie is now the live session
    g.gw.maintenance = maintenance.Maintenance(lambda owner: None, period=60)  # no thread racing this test
    g.gw.next_sweep = 0.0  # a sweep is due
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert g.gw.store.get(idle) is not None and g.keycloak.ended == []  # the request did not sweep
    views.housekeeping(g.gw)
    assert g.gw.store.get(idle) is None and g.keycloak.ended == ["rt-0"]
    assert g.gw.next_sweep > time.time() + 50


def test_the_housekeeping_thread_runs_per_worker_and_keeps_the_watermarks_fresh(g: Gateway) -> None:
    g.log_in()
    assert not g.gw.maintenance.running()
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert g.gw.maintenance.running()
    store = g.service.revocations
    assert isinstance(store, SqlRevocationStore)
    loaded = store._subjects_loaded_at
    deadline = time.monotonic() + 5
    while store._subjects_loaded_at == loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store._subjects_loaded_at > loaded  # reloaded by the thread, not by a request
    # a request finds the cache fresh: no query on its path
    queries: list[int] = []
    original = store._load_subjects
    store._load_subjects = lambda: (queries.append(1), original())[1]  # type: ignore[method-assign]
    try:
        store.reload_subjects()
        assert g.get(f"{PREFIX}/studies").status_code == 200
        assert len(queries) == 1  # only the explicit reload above
    finally:
        store._load_subjects = original  # type: ignore[method-assign]


def test_a_watermark_raised_in_another_worker_reaches_this_one_through_housekeeping(g: Gateway) -> None:
    """The sync (another process) removes a role: this worker's next housekeeping round sees the
    watermark, and the next request renews the token with the new grant."""
    g.log_in()
    assert g.get(f"{PREFIX}/studies").status_code == 200
    g.service.revocations.subjects()  # cached in this worker now
    with session(engine(g.db_url)) as s:
        s.execute(text("DELETE FROM role_assignments"))
        s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="referring-physician", scopes={}))
    time.sleep(1.1)  # whole seconds
    SqlRevocationStore(engine(g.db_url), cache_seconds=0).revoke_subject("guid-alice", int(time.time()),
                                                                         int(time.time()) + 3600)
    time.sleep(1.1)
    views.housekeeping(g.gw)
    assert "guid-alice" in g.service.revocations.subjects()
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert g.keycloak.refreshed == 1


def test_a_stalled_housekeeping_thread_falls_back_to_the_request_reloading(g: Gateway) -> None:
    """If the thread stops reloading, the watermark cache expires and the request reloads it itself."""
    g.log_in()
    g.gw.maintenance = maintenance.Maintenance(lambda owner: None, period=60)  # a thread that does nothing
    store = g.service.revocations
    assert isinstance(store, SqlRevocationStore)
    store._subjects_loaded_at = float("-inf")  # as if the thread had not run for a long time
    time.sleep(1.1)
    SqlRevocationStore(engine(g.db_url), cache_seconds=0).revoke_subject("guid-alice", int(time.time()),
                                                                         int(time.time()) + 3600)
    time.sleep(1.1)
    assert g.get(f"{PREFIX}/studies").status_code in (200, 403)
    assert "guid-alice" in store.subjects() and g.keycloak.refreshed == 1


def test_logout_in_another_worker_counts_at_once(g: Gateway) -> None:
    """Worker B served the session (its decrypted tokens are cached there); worker A logs it out;
    B refuses the very next request: B reads the row on every request, the cache only saves the
    decryption of a row that is still there."""
    raw = g.log_in()
    b = Worker(g)
    assert b.get(f"{PREFIX}/studies", raw).status_code == 200
    assert b.get(f"{PREFIX}/studies", raw).status_code == 200
    login = g.gw.store.get(raw)
    assert login is not None
    r = g.post(f"{PREFIX}/logout", headers={"Origin": BASE}, data={"csrf_token": views.csrf_for(g.gw, login)})
    assert r.status_code == 303
    n = len(g.orthanc.requests)
    assert b.get(f"{PREFIX}/studies", raw).status_code == 401
    assert len(g.orthanc.requests) == n


def test_backchannel_logout_in_another_worker_counts_at_once(g: Gateway) -> None:
    raw = g.log_in(sid="kc-sid-1")
    b = Worker(g)
    assert b.get(f"{PREFIX}/studies", raw).status_code == 200
    token = logout_token(sid="kc-sid-1", sub=None)
    assert g.post("/backchannel-logout", data={"logout_token": token}).status_code == 200
    n = len(g.orthanc.requests)
    assert b.get(f"{PREFIX}/studies", raw).status_code == 401
    assert len(g.orthanc.requests) == n


def test_a_renewal_in_another_worker_is_picked_up_not_the_cached_old_token(g: Gateway) -> None:
    """Worker B cached the opening of the old ciphertext; A renews (new ciphertext): B forwards the
    new token, never the old one it had decrypted."""
    raw = g.log_in()
    b = Worker(g)
    assert b.get(f"{PREFIX}/studies", raw).status_code == 200
    old = g.orthanc.last.headers["authorization"]
    with session(engine(g.db_url)) as s:
        s.execute(text("UPDATE gateway_sessions SET token_exp = :t"),
                  {"t": datetime.fromtimestamp(time.time() + 10, UTC)})
    assert g.get(f"{PREFIX}/studies").status_code == 200  # A renews (inside the margin)
    new = g.orthanc.last.headers["authorization"]
    assert new != old
    assert b.get(f"{PREFIX}/studies", raw).status_code == 200
    assert g.orthanc.last.headers["authorization"] == new


def test_the_thread_ends_with_its_app() -> None:
    class Owner:
        pass

    rounds: list[int] = []
    m = maintenance.Maintenance(lambda owner: rounds.append(1), period=0.05)
    owner = Owner()
    m.ensure_running(owner)
    thread = m._thread
    assert thread is not None
    deadline = time.monotonic() + 5
    while not rounds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rounds
    del owner
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_failing_round_does_not_stop_the_thread() -> None:
    class Owner:
        pass

    calls: list[int] = []

    def task(owner: Any) -> None:
        calls.append(1)
        raise RuntimeError("database down")

    m = maintenance.Maintenance(task, period=0.05)
    owner = Owner()
    m.ensure_running(owner)
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3 and m.running()
    del owner


def test_a_database_outage_is_logged_once_not_every_round(g: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    store = g.service.revocations

    def down() -> None:
        raise RuntimeError("connection refused")

    original = store.reload_subjects  # type: ignore[attr-defined]
    store.reload_subjects = down  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="bridge.web.gateway.views"):
        for _ in range(5):
            views.housekeeping(g.gw)
        store.reload_subjects = original  # type: ignore[attr-defined]
        views.housekeeping(g.gw)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed" in m for m in messages) == 1 and sum("works again" in m for m in messages) == 1
