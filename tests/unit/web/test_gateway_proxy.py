"""The gateway's proxy through Flask's test client, with an Orthanc double behind httpx: what
reaches Orthanc (identity added, browser credentials and forged headers dropped), what comes back
(hop-by-hop dropped, URLs rewritten), streaming both ways, same-origin, CORS, and the ways around."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from gateway_helpers import BASE, ORTHANC, PREFIX, VIEWER_ORIGIN, Gateway, counting

from bridge.pacs.plugin_config import WORKSTATION_HEADER
from bridge.web.gateway import proxy, rules


@pytest.fixture
def g(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


def _bearer(req: httpx.Request) -> dict[str, Any]:
    auth = req.headers["authorization"]
    assert auth.startswith("Bearer ")
    return dict(jwt.decode(auth[7:], options={"verify_signature": False}))


# --------------------------------------------------------------------------- what reaches Orthanc


def test_request_carries_the_pacs_token_and_never_the_browsers_credentials(g: Gateway) -> None:
    g.log_in()
    r = g.get(f"{PREFIX}/studies", headers={
        "Authorization": "Bearer forged", "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6",
        WORKSTATION_HEADER: "6.6.6.6", "X-Real-IP": "6.6.6.6", "Connection": "close, X-Secret-Hop",
        "X-Secret-Hop": "1", "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic x"})
    assert r.status_code == 200
    sent = g.orthanc.last
    assert sent.url.path == "/studies"
    assert _bearer(sent)["sub"] == "guid-alice" and _bearer(sent)["client_id"] == "pacs-gateway"
    names = {k.lower() for k in sent.headers}
    for gone in ("cookie", "x-forwarded-for", "forwarded", "x-real-ip", "x-secret-hop", "keep-alive", "te",
                 "proxy-authorization"):
        assert gone not in names, gone
    assert sent.headers.get_list(WORKSTATION_HEADER) == ["127.0.0.1"]  # the TCP peer, not the forged one
    assert len(sent.headers.get_list("authorization")) == 1


def test_the_session_cookie_never_reaches_orthanc(g: Gateway) -> None:
    raw = g.log_in()
    g.client.set_cookie("other", "x", domain="bridge.test")
    g.get(f"{PREFIX}/system")
    assert "cookie" not in {k.lower() for k in g.orthanc.last.headers}
    assert raw not in json.dumps(dict(g.orthanc.last.headers))


def test_query_string_passes_unchanged(g: Gateway) -> None:
    g.log_in()
    g.get(f"{PREFIX}/tools/find?expand=true&limit=5")
    assert g.orthanc.last.url.query == b"expand=true&limit=5"


@pytest.mark.parametrize("query", ["access_token=abc", "ACCESS_TOKEN=abc", "token=abc", "id_token=abc"])
def test_a_token_in_the_url_is_never_accepted(g: Gateway, query: str) -> None:
    issued = g.issue()
    r = g.get(f"{PREFIX}/dicom-web/studies?{query.replace('abc', issued.access_token)}")
    assert r.status_code == 400 and g.orthanc.requests == []


# --------------------------------------------------------------------------- what comes back


def test_response_hop_by_hop_and_cookies_dropped_location_rewritten(g: Gateway) -> None:
    g.log_in()
    g.orthanc.handler = lambda req: httpx.Response(
        302, headers=[("Location", f"{ORTHANC}/app/explorer.html"), ("Connection", "close, X-Hop"),
                      ("X-Hop", "1"), ("Keep-Alive", "timeout=5"), ("Set-Cookie", "orthanc=1"),
                      ("Access-Control-Allow-Origin", "*"), ("Content-Type", "text/plain")], content=b"")
    r = g.get(f"{PREFIX}/")
    r = g.get(f"{PREFIX}/app/")
    assert r.status_code == 302
    assert r.headers["Location"] == f"{BASE}{PREFIX}/app/explorer.html"
    for gone in ("X-Hop", "Keep-Alive", "Set-Cookie", "Access-Control-Allow-Origin"):
        assert gone not in r.headers, gone


def test_relative_location_stays_under_the_prefix() -> None:
    assert proxy.rewrite_location("/studies/1", ORTHANC, BASE + PREFIX) == f"{BASE}{PREFIX}/studies/1"
    assert proxy.rewrite_location("//evil.test/x", ORTHANC, BASE + PREFIX) == "//evil.test/x"
    assert proxy.rewrite_location("explorer.html", ORTHANC, BASE + PREFIX) == "explorer.html"


def test_dicomweb_urls_in_json_are_rewritten(g: Gateway) -> None:
    g.log_in()
    body = [{"00081190": {"vr": "UR", "Value": [f"{ORTHANC}/dicom-web/studies/1.2.3"]},
             "7FE00010": {"vr": "OB",
                          "BulkDataURI": f"{ORTHANC}/dicom-web/studies/1.2.3/series/4/instances/5/bulk/7fe00010"},
             "00100010": {"vr": "PN", "Value": [{"Alphabetic": "http://elsewhere.test/x"}]}}]
    g.orthanc.handler = lambda req: httpx.Response(200, json=body, headers={"Content-Type": "application/dicom+json"})
    r = g.get(f"{PREFIX}/dicom-web/studies")
    doc = r.get_json(force=True)
    assert doc[0]["00081190"]["Value"] == [f"{BASE}{PREFIX}/dicom-web/studies/1.2.3"]
    assert doc[0]["7FE00010"]["BulkDataURI"].startswith(f"{BASE}{PREFIX}/dicom-web/studies/1.2.3/")
    assert doc[0]["00100010"]["Value"][0]["Alphabetic"] == "http://elsewhere.test/x"
    assert ORTHANC not in r.get_data(as_text=True)


def test_proxied_html_gets_a_csp_and_nosniff(g: Gateway) -> None:
    g.log_in()
    g.orthanc.handler = lambda req: httpx.Response(200, content=b"<html></html>",
                                                   headers={"Content-Type": "text/html"})
    r = g.get(f"{PREFIX}/app/explorer.html")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "frame-ancestors" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


EXPLORER = (b'<!DOCTYPE html>\n<html><head><title>Orthanc Explorer</title></head>\n'
            b'<BODY class="x">\n<div data-role="page" id="lookup">find</div></body></html>')


def test_orthanc_explorer_gets_a_visible_logout_link(g: Gateway) -> None:
    """Issue 11, "Visible logout": the explorer page carries a link to the gateway's logout form
    (a plain link: no script, allowed by the page's CSP), labelled for screen readers."""
    g.log_in()
    g.orthanc.handler = lambda req: httpx.Response(200, content=EXPLORER, headers={
        "Content-Type": "text/html", "Content-Length": str(len(EXPLORER))})
    r = g.get(f"{PREFIX}/app/explorer.html")
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and f'href="{PREFIX}/logout"' in page and "Log out" in page
    assert page.index("Log out") > page.index('<BODY class="x">') and 'aria-label=' in page
    assert page.index("Log out") < page.index('data-role="page"')
    assert int(r.headers["Content-Length"]) == len(r.get_data())
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "<script" not in page.lower()


@pytest.mark.parametrize("path,ctype,body", [
    ("/app/explorer.js", "application/javascript", EXPLORER),  # not the page
    ("/app/other.html", "text/html", EXPLORER),  # another page
    ("/app/explorer.html", "text/plain", EXPLORER),  # not HTML
    ("/app/explorer.html", "text/html", b"<html>no body tag</html>"),
])
def test_nothing_else_is_rewritten(g: Gateway, path: str, ctype: str, body: bytes) -> None:
    g.log_in()
    g.orthanc.handler = lambda req: httpx.Response(200, content=body, headers={"Content-Type": ctype})
    assert g.get(f"{PREFIX}{path}").get_data() == body


def test_the_logout_link_is_not_injected_into_a_head_or_an_error(g: Gateway) -> None:
    g.log_in()
    g.orthanc.handler = lambda req: httpx.Response(404, content=EXPLORER, headers={"Content-Type": "text/html"})
    assert g.get(f"{PREFIX}/app/explorer.html").get_data() == EXPLORER


# --------------------------------------------------------------------------- streaming


def test_a_large_download_is_streamed_not_buffered(g: Gateway) -> None:
    g.log_in()
    produced = [0]
    total, chunk = 64 * 1024 * 1024, 256 * 1024
    g.orthanc.handler = lambda req: httpx.Response(
        200, content=counting(total, chunk, produced), headers={"Content-Type": "application/zip"})
    r = g.client.get(f"{PREFIX}/studies/x/archive", base_url=BASE, buffered=False)
    assert r.status_code == 200
    got, ahead = 0, 0
    for piece in r.response:
        ahead = max(ahead, produced[0] - got)  # produced but not yet given to the client
        got += len(piece)
    r.close()
    assert got == total
    assert ahead <= 2 * chunk, f"the gateway ran {ahead} bytes ahead of the client: it buffers"


def test_a_large_upload_is_streamed_not_buffered(g: Gateway) -> None:
    g.log_in()
    produced = [0]
    total, chunk = 64 * 1024 * 1024, 256 * 1024
    ahead = [0]

    def consume(req: httpx.Request) -> httpx.Response:
        got = 0
        for piece in req.stream:  # type: ignore[union-attr]
            ahead[0] = max(ahead[0], produced[0] - got)  # read from the client, not yet given to Orthanc
            got += len(piece)
        return httpx.Response(200, json={"got": got})

    g.orthanc.handler = consume

    class Body:
        def __init__(self) -> None:
            self.it = counting(total, chunk, produced)
            self.rest = b""

        def read(self, n: int = -1) -> bytes:
            while len(self.rest) < max(n, 1):
                try:
                    self.rest += next(self.it)
                except StopIteration:
                    break
            out, self.rest = (self.rest, b"") if n < 0 else (self.rest[:n], self.rest[n:])
            return out

    from werkzeug.test import EnvironBuilder

    cookie = g.client.get_cookie("__Host-pacs-gateway", domain="bridge.test")
    assert cookie is not None
    environ = EnvironBuilder(path=f"{PREFIX}/instances", base_url=BASE, method="POST", headers={
        "Content-Length": str(total), "Content-Type": "application/dicom", "Origin": BASE,
        "Cookie": f"__Host-pacs-gateway={cookie.value}"}).get_environ()
    environ["wsgi.input"] = Body()  # read as it comes, like a socket; never seekable
    environ["CONTENT_LENGTH"] = str(total)
    status: list[str] = []
    out = b"".join(g.app.wsgi_app(environ, lambda s, h, *a: status.append(s)))  # type: ignore[arg-type]
    assert status[0].startswith("200") and json.loads(out)["got"] == total
    assert g.orthanc.last.headers["content-length"] == str(total)
    assert ahead[0] <= 2 * chunk, f"the gateway read {ahead[0]} bytes ahead of Orthanc: it buffers"


# --------------------------------------------------------------------------- same-origin


@pytest.mark.parametrize("headers", [
    {},  # neither header
    {"Origin": "null"},
    {"Origin": "https://evil.test"},
    {"Origin": "https://bridge.test.evil.test"},
    {"Origin": "http://bridge.test"},  # another scheme is another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.test", "Sec-Fetch-Site": "same-origin"},  # Origin wins
])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_state_changing_requests_need_same_origin(g: Gateway, headers: dict[str, str], method: str) -> None:
    g.log_in()
    r = g.open(f"{PREFIX}/studies/x", method=method, headers=headers, data=b"{}")
    assert r.status_code == 403
    assert g.orthanc.requests == []
    assert any("cross-site" in d for d in g.denied())


@pytest.mark.parametrize("headers", [{"Origin": BASE}, {"Origin": BASE.upper()}, {"Sec-Fetch-Site": "same-origin"}])
def test_same_origin_state_change_passes(g: Gateway, headers: dict[str, str]) -> None:
    g.log_in()
    assert g.post(f"{PREFIX}/tools/find", headers=headers, json={}).status_code == 200


def test_same_origin_rule_table() -> None:
    assert rules.same_origin("GET", {}, BASE)[0]
    assert not rules.same_origin("PATCH", {}, BASE)[0]


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("path", [
    f"{PREFIX}/../token", f"{PREFIX}/%2e%2e/token", f"{PREFIX}/%2E%2E/token", f"{PREFIX}/app/../../token",
    f"{PREFIX}/app/%2e%2e/%2e%2e/token", f"{PREFIX}/./system", f"{PREFIX}/app/..%2f..%2ftoken",
    f"{PREFIX}/app//x", f"{PREFIX}/app%5c..%5csystem", f"{PREFIX}/sys%00tem",
])
def test_no_path_climbs_out_of_orthancs_tree(g: Gateway, path: str) -> None:
    g.log_in()
    r = g.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert g.orthanc.requests == []


@pytest.mark.parametrize("path", ["/PACS/system", "/Pacs/system", "/pacsx/system", "//pacs/system"])
def test_the_prefix_spelled_differently_is_not_the_gateway(g: Gateway, path: str) -> None:
    g.log_in()
    r = g.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert g.orthanc.requests == []


def test_an_encoded_slash_is_a_separator_for_the_gateway_as_for_orthanc(g: Gateway) -> None:
    """The server hands the app the decoded path only: ``%2F`` splits segments here, and Orthanc
    (which decodes before splitting) gets the same segments, never an encoding it could read otherwise."""
    g.log_in()
    assert g.get("/pacs%2Fsystem").status_code == 200 and g.orthanc.last.url.raw_path == b"/system"
    assert g.get(f"{PREFIX}/studies%2Fx").status_code == 200 and g.orthanc.last.url.raw_path == b"/studies/x"
    n = len(g.orthanc.requests)
    assert g.get(f"{PREFIX}/studies%2F..%2Fsystem").status_code == 400 and len(g.orthanc.requests) == n


@pytest.mark.parametrize("path", [f"{PREFIX}/studies%3Fexpand", f"{PREFIX}/studies%23x", f"{PREFIX}/studies%2541",
                                  f"{PREFIX}/studies%252e%252e/x"])
def test_what_would_name_another_resource_once_forwarded_is_refused(g: Gateway, path: str) -> None:
    """``?``, ``#`` and ``%`` in a decoded segment: in the URL sent to Orthanc they would start a query,
    a fragment or an escape (``%2541`` is ``%41`` here and ``A`` at Orthanc)."""
    g.log_in()
    assert g.get(path).status_code == 400 and g.orthanc.requests == []


def test_bare_prefix_redirects_to_the_landing_page(g: Gateway) -> None:
    r = g.get(PREFIX)
    assert r.status_code == 308 and r.headers["Location"].endswith(f"{PREFIX}/")


def test_rule_upstream_path() -> None:
    assert rules.upstream_path("app/explorer.html") == "/app/explorer.html"
    assert rules.upstream_path("studies/") == "/studies/"
    assert rules.upstream_path("a/../b") is None
    assert rules.upstream_path("a//b") is None
    for odd in ("a?b", "a#b", "a%41", "a\\b", "a\x00b"):
        assert rules.upstream_path(odd) is None, odd


# --------------------------------------------------------------------------- without a session


def test_xhr_without_session_gets_401_navigation_goes_to_keycloak(g: Gateway) -> None:
    r = g.get(f"{PREFIX}/studies", headers={"Sec-Fetch-Mode": "cors"})
    assert r.status_code == 401 and g.orthanc.requests == []
    r = g.get(f"{PREFIX}/app/explorer.html", headers={"Sec-Fetch-Mode": "navigate"})
    assert r.status_code == 302 and "/protocol/openid-connect/auth" in r.headers["Location"]
    assert "code_challenge_method=S256" in r.headers["Location"] and "nonce=" in r.headers["Location"]


@pytest.mark.parametrize("cookie", ["", "x", "A" * 43 + "\x00", "A" * 42, "A" * 43])
def test_forged_session_ids_are_no_session(g: Gateway, cookie: str) -> None:
    g.set_cookie(cookie)
    assert g.get(f"{PREFIX}/studies").status_code == 401
    assert g.orthanc.requests == []


# --------------------------------------------------------------------------- external viewers (bearer, CORS)


def test_bearer_dicomweb_passes_the_callers_token_with_cors_for_allowed_origin(g: Gateway) -> None:
    issued = g.issue()
    r = g.get(f"{PREFIX}/dicom-web/studies", headers={"Authorization": f"Bearer {issued.access_token}",
                                                      "Origin": VIEWER_ORIGIN})
    assert r.status_code == 200
    assert g.orthanc.last.headers["authorization"] == f"Bearer {issued.access_token}"
    assert r.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_bearer_from_another_origin_gets_no_cors(g: Gateway) -> None:
    issued = g.issue()
    r = g.get(f"{PREFIX}/dicom-web/studies", headers={"Authorization": f"Bearer {issued.access_token}",
                                                      "Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cookie_requests_never_get_cors(g: Gateway) -> None:
    g.log_in()
    r = g.get(f"{PREFIX}/dicom-web/studies", headers={"Origin": VIEWER_ORIGIN})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_bearer_path_is_dicomweb_only(g: Gateway) -> None:
    issued = g.issue()
    r = g.get(f"{PREFIX}/studies", headers={"Authorization": f"Bearer {issued.access_token}"})
    assert r.status_code == 401 and g.orthanc.requests == []


def test_repeated_authorization_is_refused(g: Gateway) -> None:
    r = g.get(f"{PREFIX}/dicom-web/studies", headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert r.status_code == 401 and g.orthanc.requests == []


@pytest.mark.parametrize("origin,path,status", [
    (VIEWER_ORIGIN, "/dicom-web/studies", 204), ("https://evil.test", "/dicom-web/studies", 403),
    (VIEWER_ORIGIN, "/studies", 403), ("null", "/dicom-web/studies", 403)])
def test_preflight(g: Gateway, origin: str, path: str, status: int) -> None:
    r = g.open(f"{PREFIX}{path}", method="OPTIONS", headers={"Origin": origin,
                                                          "Access-Control-Request-Method": "GET"})
    assert r.status_code == status
    assert (r.headers.get("Access-Control-Allow-Origin") == origin) is (status == 204)
    assert g.orthanc.requests == []


def test_head_is_treated_like_get(g: Gateway) -> None:
    assert g.open(f"{PREFIX}/studies", method="HEAD").status_code == 401 and g.orthanc.requests == []
    g.log_in()
    assert g.open(f"{PREFIX}/studies", method="HEAD").status_code == 200
    assert g.orthanc.last.method == "HEAD" and g.orthanc.last.headers["authorization"].startswith("Bearer ")


@pytest.mark.parametrize("xff,expected", [
    ("10.1.2.3", "10.1.2.3"),
    ("6.6.6.6, 10.1.2.3", "10.1.2.3"),  # only the entry our one proxy appended counts
    ("6.6.6.6,10.1.2.3", "10.1.2.3"),
])
def test_workstation_address_behind_a_trusted_proxy(tmp_path: Path, xff: str, expected: str) -> None:
    g = Gateway(tmp_path, web={"trusted_proxy_hops": 1})
    g.log_in()
    g.get(f"{PREFIX}/studies", headers={"X-Forwarded-For": xff, WORKSTATION_HEADER: "6.6.6.6"})
    assert g.orthanc.last.headers.get_list(WORKSTATION_HEADER) == [expected]
    assert "x-forwarded-for" not in {k.lower() for k in g.orthanc.last.headers}


def test_a_repeated_forwarding_header_cannot_name_the_workstation(tmp_path: Path) -> None:
    g = Gateway(tmp_path, web={"trusted_proxy_hops": 1})
    g.log_in()
    g.get(f"{PREFIX}/studies", headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "10.1.2.3")])
    assert g.orthanc.last.headers.get_list(WORKSTATION_HEADER) != ["6.6.6.6"]


def test_refusals_are_audited_in_bounded_volume(g: Gateway) -> None:
    for _ in range(200):
        assert g.get(f"{PREFIX}/%2e%2e/token").status_code == 400
    refused = [r for r in g.denied() if r.startswith("gateway:")]
    assert 1 <= len(refused) <= 20, len(refused)
