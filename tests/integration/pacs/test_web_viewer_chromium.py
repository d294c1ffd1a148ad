"""A real Chromium (Debian chromium + chromium-driver) opens the Orthanc Web Viewer on a series:
the image renders (the canvas is not blank) and every image request answered 200; the same scoped
user opening an out-of-scope series gets 403 and nothing drawn.

How the browser gets its token is one function per entry (``VIEWER_ENTRIES``):

* ``orthanc`` (today): straight to Orthanc; Chromium cannot send a bearer token by itself, so the test
  adds ``Authorization: Bearer`` to every request of the page through the DevTools protocol
  (``Network.setExtraHTTPHeaders``), which is what the gateway will do on the server side.
* ``gateway`` (after the merge with the browser session gateway): :func:`through_gateway` logs in at
  the gateway (password + TOTP at Keycloak) and the session cookie carries the rest; see its docstring
  for what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.core.permissions import Permission as P
from pacs_devstack import browser, tls
from tests.integration.pacs.scoped_tokens import scoped_token
from tests.integration.pacs.viewer_studies import IN, OUT, store_studies

pytestmark = pytest.mark.integration

#: distinct colours on the viewer's canvas (-1: no canvas yet); a blank canvas has one
CANVAS_COLOURS = """
var c = document.querySelector('#dicomImage canvas');
if (!c || !c.width || !c.height) { return -1; }
var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
var seen = {}, n = 0;
for (var i = 0; i < d.length; i += 4) {
  var k = d[i] + ',' + d[i + 1] + ',' + d[i + 2];
  if (!seen[k]) { seen[k] = 1; n++; }
}
return n;
"""
#: (url, status) of every request the page made to the viewer's data routes
VIEWER_REQUESTS = """
return performance.getEntriesByType('resource')
  .filter(function (e) { return e.name.indexOf('/web-viewer/') >= 0 && e.name.indexOf('/app/') < 0
                                && e.name.indexOf('/libs/') < 0; })
  .map(function (e) { return [e.name, e.responseStatus]; });
"""


def through_orthanc(b: browser.Browser, pacs: Any, token: str) -> str:
    """Every request of the page carries the bearer token; the viewer is Orthanc's own.  Returns its base."""
    b.cdp("Network.enable")
    b.cdp("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {token}"}})
    return str(pacs.url)


def through_gateway(b: browser.Browser, gateway_url: str, username: str, password: str,
                    otp: Callable[[], str]) -> str:
    """Log in at the gateway (``https://<bridge>/pacs/``): Keycloak's form, then the TOTP form; the
    gateway keeps the PACS token and adds it to every proxied request.  Returns the viewer's base.

    Needs, after the merge: the stack's bridge with the gateway, an Orthanc whose plugin trusts that
    bridge (not the ``pacs`` fixture's double), a Radiology-only user of the demo hospital and
    studies of two departments in that Orthanc (tests/integration/gateway/ has them)."""
    b.go(gateway_url + "/")
    assert b.wait_for(lambda: b.element("#kc-form-login") is not None), b.url()
    b.fill("#username", username)
    b.fill("#password", password)
    b.click("#kc-login")
    assert b.wait_for(lambda: b.element("#otp") is not None or b.url().startswith(gateway_url)), b.url()
    if not b.url().startswith(gateway_url):
        b.fill("#otp", otp())
        b.click("#kc-login")
    assert b.wait_for(lambda: b.url().startswith(gateway_url)), b.url()
    return gateway_url


def test_chromium_renders_an_in_scope_series_and_not_another(pacs: Any, tmp_path: Path) -> None:
    browser.ensure_installed()
    studies = store_studies(pacs, "chromium")
    token = scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD], departments=["Radiology"], lifetime=600)
    # Orthanc serves HTTPS with the stack's certificate for it: the browser trusts exactly that one
    with browser.chromium([tls.issue("orthanc").cert], tmp_path / "profile") as b:
        viewer_renders_own_series_only(b, through_orthanc(b, pacs, token), studies[IN], studies[OUT])


def viewer_renders_own_series_only(b: browser.Browser, base: str, own: dict[str, str], other: dict[str, str]) -> None:
    """The checks, whatever the entry: ``own`` (in scope) renders, ``other`` (out of scope) is refused."""
    b.go(f"{base}/web-viewer/app/viewer.html?series={own['series']}")
    assert b.wait_for(lambda: (b.execute(CANVAS_COLOURS) or -1) > 1, timeout=30), \
        f"the canvas stayed blank: {b.execute(CANVAS_COLOURS)} colour(s)"
    asked = b.execute(VIEWER_REQUESTS)
    assert any("/web-viewer/series/" + own["series"] in url for url, _ in asked), asked
    assert any("/web-viewer/instances/jpeg95-" + own["instance"] + "_0" in url for url, _ in asked), asked
    assert all(status == 200 for _, status in asked), asked

    b.go(f"{base}/web-viewer/app/viewer.html?series={other['series']}")
    assert b.wait_for(lambda: any("/web-viewer/series/" + other["series"] in url
                                  for url, _ in b.execute(VIEWER_REQUESTS)), timeout=30)
    asked = b.execute(VIEWER_REQUESTS)
    assert [status for url, status in asked if other["series"] in url] == [403], asked
    assert not any("/web-viewer/instances/" in url for url, _ in asked), asked
    assert b.execute(CANVAS_COLOURS) <= 1  # nothing drawn
    # the page's own requests to the out-of-scope image are refused too
    status = b.execute_async(
        "var done = arguments[arguments.length - 1];"
        "fetch('../instances/jpeg95-' + arguments[0] + '_0').then(function (r) { done(r.status); });",
        other["instance"])
    assert status == 403
