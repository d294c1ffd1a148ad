"""The gateway's fast path (bridge/web/gateway/fast_path.py): a proxied GET whose session needs nothing
serves without Flask; everything else -- and every way around a rule -- goes to the Flask route
and gets its answer.  (The rest of the gateway's unit tests run through the fast path too: it sits
in front of the app the test client calls.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import PREFIX, Gateway

from bridge.web import metrics
from bridge.web.gateway import views


class Counted:
    def __init__(self, view: Callable[..., Any]):
        self.view, self.calls = view, 0

    def __call__(self, *a: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.view(*a, **kw)


@pytest.fixture
def g(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


@pytest.fixture
def flask_route(g: Gateway) -> Counted:
    counted = Counted(g.app.view_functions["gateway.proxy"])
    g.app.view_functions["gateway.proxy"] = counted
    return counted


def _served(endpoint: str = "gateway.proxy") -> float:
    return sum(s.value for m in metrics.REQUESTS.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("endpoint") == endpoint)


def test_a_get_that_needs_nothing_skips_flask_and_is_still_counted(g: Gateway, flask_route: Counted) -> None:
    g.log_in()
    before = _served()
    for method in ("GET", "HEAD"):
        assert g.open(f"{PREFIX}/studies", method=method).status_code == 200
    assert flask_route.calls == 0 and len(g.orthanc.requests) == 2
    assert _served() == before + 2


@pytest.mark.parametrize("path", [
    f"{PREFIX}/studies?access_token=abc", f"{PREFIX}/studies?ACCESS_TOKEN=abc&x=1",
    f"{PREFIX}/studies?x=1&id_token=abc", f"{PREFIX}/app/../system", f"{PREFIX}/app/%2e%2e/system",
    f"{PREFIX}//system", f"{PREFIX}/app//x", f"{PREFIX}/sys%00tem", f"{PREFIX}/app%5c..%5csystem",
])
def test_a_way_around_a_path_rule_gets_the_flask_routes_refusal(g: Gateway, flask_route: Counted, path: str) -> None:
    g.log_in()
    assert g.get(path).status_code in (308, 400, 404)  # 308: Flask's own redirect of a doubled slash
    assert not g.orthanc.requests


def test_the_gateways_own_pages_keep_their_views(g: Gateway, flask_route: Counted) -> None:
    g.log_in()
    r = g.get(f"{PREFIX}/logout")
    assert r.status_code == 200 and b"<form" in r.data
    assert flask_route.calls == 0 and not g.orthanc.requests


def test_without_a_session_flask_answers(g: Gateway, flask_route: Counted) -> None:
    assert g.get(f"{PREFIX}/studies").status_code == 401
    assert flask_route.calls == 1 and not g.orthanc.requests


def test_an_idle_session_is_ended_by_flask_not_forwarded(g: Gateway, flask_route: Counted) -> None:
    raw = g.log_in()
    login = g.gw.store.get(raw)
    assert login is not None
    g.gw.store.touch(login, time.time() - g.gw.limits.idle_seconds - 5)
    assert g.get(f"{PREFIX}/studies").status_code == 401
    assert flask_route.calls == 1 and not g.orthanc.requests and g.gw.store.get(raw) is None


def test_a_raised_watermark_renews_through_flask_before_forwarding(g: Gateway, flask_route: Counted) -> None:
    """A role removed mid-session: the token in hand must not be forwarded again."""
    raw = g.log_in()
    old = g.gw.store.get(raw)
    assert old is not None
    time.sleep(1.1)  # the watermark is in whole seconds
    g.service.revoke_subject("guid-alice", "role removed by the sync")
    time.sleep(1.1)  # Keycloak's refreshed token comes later than the sync's watermark
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert flask_route.calls == 1 and g.keycloak.refreshed == 1
    assert g.orthanc.last.headers["authorization"] != f"Bearer {old.tokens.pacs_token}"


def test_a_token_near_its_end_is_renewed_through_flask(g: Gateway, flask_route: Counted) -> None:
    g.log_in()
    g.gw.section = g.gw.section.model_copy(update={"renew_margin_seconds": 10**7})
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert flask_route.calls == 1 and g.keycloak.refreshed == 1


def test_a_due_activity_write_goes_through_flask(g: Gateway, flask_route: Counted) -> None:
    raw = g.log_in()
    login = g.gw.store.get(raw)
    assert login is not None
    g.gw.store.touch(login, time.time() - 120)  # older than the write interval, younger than idle
    assert g.get(f"{PREFIX}/studies").status_code == 200
    assert flask_route.calls == 1
    fresh = g.gw.store.get(raw)
    assert fresh is not None and fresh.last_activity > time.time() - 5


@pytest.mark.parametrize("method,headers", [
    ("POST", {"Origin": "https://bridge.test", "Content-Type": "application/json"}),
    ("DELETE", {"Origin": "https://bridge.test"}),
    ("GET", {"Authorization": "Bearer x"}),
    ("GET", {"Content-Length": "3"}),
])
def test_requests_with_a_body_or_their_own_credentials_go_through_flask(
        g: Gateway, flask_route: Counted, method: str, headers: dict[str, str]) -> None:
    g.log_in()
    g.open(f"{PREFIX}/tools/find", method=method, headers=headers,
           data=b"{}" if method == "POST" or "Content-Length" in headers else None)
    assert flask_route.calls == 1


def test_a_cross_site_get_is_decided_by_the_same_rule(g: Gateway, flask_route: Counted) -> None:
    g.log_in()
    via_fast = g.get(f"{PREFIX}/studies", headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.test"})
    assert via_fast.status_code in (200, 403)
    ok, _ = views.rules.same_origin("GET", {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.test"},
                                    g.gw.public_origin)
    assert (via_fast.status_code == 200) == ok


@pytest.mark.parametrize("query", ["_method=DELETE", "_METHOD=delete", "%5Fmethod=DELETE", "_%6Dethod=PUT",
                                   "x=1&_method=DELETE", "_method"])
def test_a_method_override_in_the_query_is_refused(g: Gateway, query: str) -> None:
    """Orthanc turns ``GET ?_method=DELETE`` into a DELETE: a cross-site link would delete a study
    with the victim's token, past the same-origin rule that only state-changing methods meet."""
    g.log_in()
    r = g.get(f"{PREFIX}/studies/x?{query}", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 400 and not g.orthanc.requests


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "Expect"])
def test_method_override_headers_never_reach_orthanc(g: Gateway, header: str) -> None:
    g.log_in()
    assert g.get(f"{PREFIX}/studies/x", headers={header: "DELETE"}).status_code == 200
    assert header.lower() not in {k.lower() for k in g.orthanc.last.headers}


@pytest.mark.parametrize("path", [f"{PREFIX}/studies%3Fexpand", f"{PREFIX}/studies%3fexpand",
                                  f"{PREFIX}/studies%23frag"])
def test_an_encoded_query_or_fragment_mark_in_the_path_is_refused(g: Gateway, path: str) -> None:
    g.log_in()
    assert g.get(path).status_code == 400 and not g.orthanc.requests


@pytest.mark.parametrize("method", ["POST", "PUT", "GET"])
def test_a_chunked_request_body_is_refused_before_orthanc(g: Gateway, method: str) -> None:
    """The server ends a chunked body cleanly when the client stops half-way: forwarded, a cut-off
    upload would reach Orthanc as a complete one.  Only bodies with a length are taken."""
    g.log_in()
    for path in (f"{PREFIX}/instances", f"{PREFIX}/dicom-web/studies"):
        r = g.open(path, method=method, data=b"DICM", headers={"Origin": "https://bridge.test",
                                                                 "Transfer-Encoding": "chunked"})
        assert r.status_code == 411 and not g.orthanc.requests, (path, r.status_code)
    for spelling in ("transfer-encoding", "TRANSFER-ENCODING"):
        r = g.open(f"{PREFIX}/instances", method="POST", data=b"x", headers={"Origin": "https://bridge.test",
                                                                             spelling: "gzip, chunked"})
        assert r.status_code == 411 and not g.orthanc.requests


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_body_on_a_method_without_one_is_refused(g: Gateway, method: str) -> None:
    """Orthanc never reads it: forwarded, it could only desync the connection to Orthanc."""
    g.log_in()
    r = g.open(f"{PREFIX}/studies/x", method=method, data=b"GET /smuggled HTTP/1.1\r\n\r\n",
               headers={"Origin": "https://bridge.test"})
    assert r.status_code == 400 and not g.orthanc.requests
    bearer = g.open(f"{PREFIX}/dicom-web/studies", method="GET", data=b"x" * 10,
                    headers={"Authorization": "Bearer abc"})
    assert bearer.status_code == 400 and not g.orthanc.requests


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_releases_its_upstream_at_once(g: Gateway, status: int) -> None:
    import httpx

    closed: list[bool] = []

    class Body(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b""

        def close(self) -> None:
            closed.append(True)

    g.orthanc.handler = lambda req: httpx.Response(status, headers=[("ETag", '"1"')], stream=Body())
    g.log_in()
    r = g.get(f"{PREFIX}/instances/x/preview", headers={"If-None-Match": '"1"'})
    assert r.status_code == status and closed == [True]
