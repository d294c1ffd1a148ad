"""The gateway's fast path: a proxied GET that needs nothing but its session skips Flask.

Why: Flask's own machinery (request context, routing, hooks, response finalisation) cost about
0.3 ms per request on the test machine, a fifth of issue 11's added-latency budget (< 1.5 ms median
over a direct Orthanc request), on the route that carries every image a viewer shows.

What it serves, and nothing else (every other request goes to Flask unchanged, where the same
route's full code runs):

* ``GET`` / ``HEAD`` without a body or an ``Authorization`` header, routed by the app's own URL map
  to the gateway's proxy endpoint (so the landing page, logout, break-glass and every other page keep
  their Flask views);
* whose path, query and origin pass the same rules as the Flask route (:mod:`.rules`,
  :func:`.views.url_has_token`);
* whose session is live and needs no action: not idle or past its lifetime, no renewal due
  (:func:`.views.renewal_due`: token end, subject watermark), no idle-clock write due.

It then forwards with the same function as the Flask route (:func:`.views.forward`) and counts the
request in the same metrics.  It sits inside ``ProxyFix`` (the client address is the one Flask would
see).  A failure while deciding falls back to Flask; nothing is sent to Orthanc before the decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Request

from bridge.web import metrics
from bridge.web.client import address_of
from bridge.web.gateway import proxy, rules, views

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: the Flask endpoint of the proxy route (the fast path serves only what Flask would route there)
ENDPOINT = "gateway.proxy"
_SAFE = frozenset({"GET", "HEAD"})


class FastPath:
    """WSGI middleware in front of the Flask app (inside ``ProxyFix``)."""

    def __init__(self, app: Any, inner: WSGIApp, gw: views.Gateway):
        self.app = app
        self.inner = inner
        self.gw = gw
        self.prefix = gw.prefix + "/"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _SAFE or not environ.get("PATH_INFO", "").startswith(self.prefix):
            return self.inner(environ, start_response)
        started = time.perf_counter()
        try:
            plan = self._plan(environ)
        except Exception:  # deciding failed: Flask decides (and reports) the same request
            log.exception("gateway: fast path failed; the request goes through the app")
            plan = None
        if plan is None:
            return self.inner(environ, start_response)
        req, path, login = plan
        resp = views.forward(self.gw, req.method, path, req.query_string, proxy.header_items(req.headers),
                             login.tokens.pacs_token, address_of(req.remote_addr))
        metrics.record(ENDPOINT, req.method, resp.status_code, time.perf_counter() - started)
        if resp.is_sequence:  # a body already read (JSON with its URLs rewritten, an empty answer):
            # handed over as one list, which the server writes at once instead of draining an iterator
            start_response(resp.status, resp.get_wsgi_headers(environ).to_wsgi_list())
            return [] if req.method == "HEAD" else [resp.get_data()]
        return resp(environ, start_response)

    def _plan(self, environ: dict[str, Any]) -> tuple[Request, str, Any] | None:
        """(request, Orthanc path, session) when this request needs nothing but forwarding, else None."""
        if ("HTTP_AUTHORIZATION" in environ or "HTTP_TRANSFER_ENCODING" in environ
                or environ.get("CONTENT_LENGTH") not in (None, "", "0")):
            return None
        try:
            endpoint, args = self.app.url_map.bind_to_environ(environ).match()
        except (HTTPException, RequestRedirect):
            return None
        if endpoint != ENDPOINT:
            return None
        gw = self.gw
        path = rules.upstream_path(str(args.get("rest", "")))
        if path is None:
            return None
        req = Request(environ)
        if (views.url_has_token(req.args) or rules.overrides_method(req.args)
                or not rules.same_origin(req.method, req.headers, gw.public_origin)[0]):
            return None
        gw.maintenance.ensure_running(gw)
        login = gw.store.get(req.cookies.get(views.COOKIE))
        if login is None:
            return None
        now = time.time()
        if rules.ended(login.created_at, login.last_activity, login.expires_at, now, gw.limits) is not None:
            return None
        if views.renewal_due(gw, login, now):
            return None
        activity = rules.is_activity(req.method, path, req.headers, gw.section.background_paths)
        if activity and views.touch_due(gw, login, now):
            return None
        return req, path, login
