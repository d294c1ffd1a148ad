"""Under the web server, forwarded headers are trusted only through the bridge's own setting
(``web.trusted_proxy_hops``, X-Forwarded-For only): the server itself must not turn
X-Forwarded-Proto and the like into the URL scheme, so a local client cannot make the bridge build
``http://`` URLs (the login's callback URL)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bridge.config import load_config
from tests.integration.web.conftest import bridge_info

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def g(start_web_server: Any) -> Any:
    return start_web_server({})


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Proto": "http"},
    {"X-Forwarded-Ssl": "off"},
    {"X-Forwarded-Protocol": "http"},
    {},
])
def test_scheme_headers_do_not_change_the_callback_url(stack: dict[str, Any], g: Any,
                                                       headers: dict[str, str]) -> None:
    settings = load_config(bridge_info(stack)["config"])
    with g.session() as s:
        # the browser login is the gateway's (a navigation: it is sent to Keycloak)
        resp = s.get(g.url + settings.gateway.prefix + "/", headers={**headers, "Sec-Fetch-Mode": "navigate"},
                     allow_redirects=False, timeout=30)
    assert resp.status_code == 302, resp.text[:200]
    callback = parse_qs(urlsplit(resp.headers["Location"]).query)["redirect_uri"][0]
    assert callback.startswith("https://"), callback


def test_an_environment_variable_named_like_a_header_is_no_header(start_web_server: Any) -> None:
    """granian starts each request's environ from the process environment: a variable
    ``HTTP_X_FORWARDED_FOR`` would be a forwarded address on every request without the header (here
    it would put a loopback client inside the metrics allow-list).  The server removes it at start."""
    g = start_web_server({"PACS_BRIDGE_WEB__TRUSTED_PROXY_HOPS": "1", "HTTP_X_FORWARDED_FOR": "10.99.1.1",
                          "PACS_BRIDGE_WEB__METRICS__ALLOW": '["10.99.0.0/16"]'})
    assert g.get_many("/metrics", 2) == [403, 403]
    assert "environment variable HTTP_X_FORWARDED_FOR removed" in g.log.read_text(errors="replace")
    with g.session() as s:  # the header itself, sent by the (trusted) proxy, still counts
        assert s.get(g.url + "/metrics", headers={"X-Forwarded-For": "10.99.1.1"}, timeout=10).status_code == 200
