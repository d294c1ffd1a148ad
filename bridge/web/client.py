"""Who is asking: the one definition of "the client address" for rate limits, audit and /metrics.

Behind reverse proxies the TCP peer is the last proxy; the original client is in
``X-Forwarded-For``, but anybody can send that header.  Werkzeug's ``ProxyFix`` takes exactly
``web.trusted_proxy_hops`` entries from the right of the header (the ones our own proxies
appended) and nothing more; with 0 hops it is not installed and the header is ignored.  After
that, ``request.remote_addr`` is the client, and :func:`client_address` is what every part of
the bridge records.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, has_request_context, request
from werkzeug.middleware.proxy_fix import ProxyFix

from bridge.config import WebSection

#: key the web layer adds to token-service audit details (read by bridge/tokens/auditing.py)
NETWORK_ADDRESS = "network_address"


def install_proxy_fix(app: Flask, web: WebSection) -> None:
    """Trust ``X-Forwarded-For`` for exactly ``trusted_proxy_hops`` hops, and no other forwarded
    header (the bridge's public URL comes from configuration, never from Host/X-Forwarded-Host)."""
    if web.trusted_proxy_hops:
        app.wsgi_app = ShortHeaderProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=web.trusted_proxy_hops, x_proto=0, x_host=0, x_port=0, x_prefix=0
        )


#: what REMOTE_ADDR becomes when the trusted proxies' entries are missing from a header that is there
INVALID = "invalid"


class ShortHeaderProxyFix(ProxyFix):
    """ProxyFix, except that an ``X-Forwarded-For`` which is present but holds fewer entries than
    the trusted hops (or none: the web server passes a header with a byte above 0x7f as an empty
    value) makes the client ``invalid`` instead of leaving the TCP peer, the proxy itself: a client
    must not become the proxy's address (inside the /metrics allow-list, sharing its rate-limit
    budget) by sending a header the server blanks.  A request with no such header at all (a health
    check by the proxy) keeps its peer, as before."""

    def _get_real_value(self, trusted: int, value: str | None) -> str | None:
        real = super()._get_real_value(trusted, value)
        if real is None and trusted and value is not None:
            return INVALID
        return real


def wrap_inside_proxy_fix(app: Flask, wrap: Callable[[Any], Any]) -> None:
    """Put the WSGI middleware ``wrap(inner)`` right around Flask, inside ProxyFix when there is one
    (so the middleware sees the client address Flask would see)."""
    outer = app.wsgi_app
    if isinstance(outer, ProxyFix):
        outer.app = wrap(outer.app)
    else:
        app.wsgi_app = wrap(outer)  # type: ignore[method-assign]


def client_address() -> str:
    """The client's IP address as trusted hops allow (``request.remote_addr`` after ProxyFix).

    A value that is not an IP address (a forged or mangled header a proxy passed through) becomes
    ``"invalid"``, so that it can neither spread rate-limit keys nor write junk into the audit trail."""
    return address_of(request.remote_addr)


def address_of(remote_addr: str | None) -> str:
    """:func:`client_address` of a ``REMOTE_ADDR`` as ProxyFix left it (also outside Flask)."""
    try:
        ip = ipaddress.ip_address((remote_addr or "").strip("[]"))
    except ValueError:
        return "invalid"
    # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; one client, one spelling
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def client_address_or_none() -> str | None:
    """:func:`client_address` inside a request; None elsewhere (background jobs)."""
    return client_address() if has_request_context() else None


AuditSink = Callable[[Any, Mapping[str, Any]], None]


class AddressedSink:
    """Wraps a token-service audit sink ``(kind, details)``: events raised while serving a request
    carry the client address, whichever endpoint (token, login, Orthanc authorization) raised them."""

    def __init__(self, inner: AuditSink):
        self.inner = inner

    def __call__(self, kind: Any, details: Mapping[str, Any]) -> None:
        addr = client_address_or_none()
        if addr is not None and NETWORK_ADDRESS not in details:
            details = {**details, NETWORK_ADDRESS: addr}
        self.inner(kind, details)

    def __getattr__(self, name: str) -> Any:  # flush(), store ... of the wrapped sink
        return getattr(self.inner, name)
