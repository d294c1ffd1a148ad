"""Forwarding one request to Orthanc and its answer back, streamed both ways.

Why httpx's models: an ``httpx.Response`` gives the answer as an iterator of raw chunks, and an
iterator as request content is sent as it is read, so a 2 GB study archive or upload passes
through the gateway in constant memory (Flask's ``stream_with_context`` keeps the request
context while the answer streams).  Orthanc is spoken to over one pool of kept-alive connections
per process (bridge/web/gateway/upstream_transport.py: the standard library's ``http.client``
under those models, a third of httpx's own client's cost per request).

Header hygiene (RFC 9110 section 7.6.1): hop-by-hop headers and every header the ``Connection``
header names are dropped in both directions; the browser's ``Cookie``, ``Authorization``,
forwarding headers and any header claiming to be the workstation address never reach Orthanc.
The gateway adds exactly ``Authorization: Bearer <PACS token>`` and the workstation header
(:data:`bridge.pacs.plugin_config.WORKSTATION_HEADER`), which the plugin trusts only from the
configured gateway addresses.

Orthanc's absolute URLs (``Location``, ``BulkDataURI`` and ``RetrieveURL`` in DICOMweb JSON) name
Orthanc's internal address; they are rewritten to ``<public URL><prefix>``.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from bridge.pacs.plugin_config import WORKSTATION_HEADER
from bridge.web.gateway.upstream_transport import PooledTransport

#: RFC 9110 7.6.1 and the pre-standard ones still seen on the wire
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"})
#: request headers that never go to Orthanc (credentials of the browser, claims about the client)
DROP_REQUEST = frozenset({"cookie", "authorization", "host", "forwarded", "x-forwarded-for", "x-forwarded-host",
                          "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip",
                          WORKSTATION_HEADER.lower(), "content-length", "accept-encoding", "origin", "referer",
                          # Orthanc applies a method override before its filter: a GET made a DELETE
                          # must not pass the gateway's same-origin rule as a GET (``?_method=`` is
                          # refused by rules.overrides_method); ``Expect``: the relay speaks no 100-continue
                          "x-http-method-override", "x-http-method", "x-method-override", "expect"})
#: answer headers Orthanc may not set on the bridge's origin
DROP_RESPONSE = frozenset({"set-cookie", "set-cookie2", "content-length", "server", "strict-transport-security",
                           "access-control-allow-origin", "access-control-allow-credentials",
                           "access-control-allow-headers", "access-control-allow-methods",
                           "access-control-expose-headers", "content-security-policy"})
#: DICOMweb JSON attributes whose value is a URL of the server
URL_ATTRIBUTES = ("BulkDataURI", "RetrieveURL")
JSON_TYPES = ("application/dicom+json", "application/json")
#: an upload is read and sent in pieces of this size
CHUNK = 64 * 1024
#: an answer is relayed in pieces of up to this size: a 200 MB archive in 800 iterations of the
#: Python loop instead of 3,200 (the loop's cost per piece, not the bytes, bounds the throughput);
#: memory stays constant (at most two pieces ahead of the browser)
RESPONSE_CHUNK = 256 * 1024


def _connection_named(headers: Iterable[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def request_headers(incoming: Iterable[tuple[str, str]], bearer: str, workstation: str | None) -> list[tuple[str, str]]:
    """The headers Orthanc gets: the browser's minus hop-by-hop/credentials, plus ours."""
    incoming = list(incoming)
    drop = HOP_BY_HOP | DROP_REQUEST | _connection_named(incoming)
    out = [(k, v) for k, v in incoming if k.lower() not in drop]
    out.append(("Authorization", f"Bearer {bearer}"))
    if workstation:
        out.append((WORKSTATION_HEADER, workstation))
    out.append(("Accept-Encoding", "identity"))  # loopback: bodies we may rewrite come plain
    return out


def response_headers(upstream: Iterable[tuple[str, str]], upstream_base: str,
                     public_base: str) -> list[tuple[str, str]]:
    """Orthanc's answer headers for the browser: hop-by-hop and cookie/CORS/security ones dropped
    (the gateway sets its own), ``Location`` rewritten."""
    upstream = list(upstream)
    drop = HOP_BY_HOP | DROP_RESPONSE | _connection_named(upstream)
    out = []
    for k, v in upstream:
        if k.lower() in drop:
            continue
        if k.lower() == "location":
            v = rewrite_location(v, upstream_base, public_base)
        out.append((k, v))
    return out


def rewrite_location(value: str, upstream_base: str, public_base: str) -> str:
    """Orthanc's absolute URL (or absolute path) -> the same resource under the gateway."""
    if value.startswith(upstream_base + "/") or value == upstream_base:
        return public_base + value[len(upstream_base):]
    if value.startswith("/") and not value.startswith("//"):
        return public_base + value
    return value


def rewrite_json(body: bytes, upstream_base: str, public_base: str) -> bytes:
    """Every string in a JSON answer that is a URL under Orthanc's base, rebased on the gateway
    (DICOMweb's ``BulkDataURI``/``RetrieveURL``, and the like in any other answer).  A body that
    is not JSON is passed unchanged, and so is one that cannot hold such a URL: without a backslash
    (no JSON escape) a string's text is its bytes, so if Orthanc's base is not in the bytes, it is in
    no string (most answers: no parse and re-encode on the request's way)."""
    if b"\\" not in body and upstream_base.encode() not in body:
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    prefix = upstream_base + "/"

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return public_base + node[len(upstream_base):] if node.startswith(prefix) else node
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    return json.dumps(walk(doc), separators=(",", ":")).encode()


#: the Orthanc page that gets the gateway's logout link (Orthanc Explorer's one HTML page)
EXPLORER_PAGE = "/app/explorer.html"
#: the explorer page is read whole to add the link only up to this size (it is about 30 KB)
EXPLORER_MAX_BYTES = 1024 * 1024
_BODY_TAG = re.compile(rb"<body\b[^>]*>", re.IGNORECASE)


def logout_link(logout_path: str) -> bytes:
    """A plain link to the gateway's logout form, fixed in the page's top right corner: no script (the
    page's CSP allows inline styles, not needed here beyond the attribute), a name for screen readers."""
    return (f'<a href="{logout_path}" id="pacs-gateway-logout" aria-label="Log out of the PACS" '
            'style="position:fixed;top:4px;right:8px;z-index:100000;padding:4px 10px;background:#fff;'
            'color:#0645ad;border:1px solid #888;border-radius:4px;font:14px sans-serif">Log out</a>').encode()


def inject_logout(page: bytes, logout_path: str) -> bytes:
    """Orthanc Explorer's page with the logout link right after its ``<body>`` tag (issue 11: a visible
    logout wherever staff work); a page without a ``<body>`` tag is returned unchanged."""
    tag = _BODY_TAG.search(page)
    if tag is None:
        return page
    return page[:tag.end()] + logout_link(logout_path) + page[tag.end():]


def needs_rewrite(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";")[0].strip().lower() in JSON_TYPES  # type: ignore[union-attr]


class Upstream:
    """Orthanc as the gateway reaches it: one pool of kept-alive connections per process
    (:class:`bridge.web.gateway.upstream_transport.PooledTransport`; tests put a double there)."""

    def __init__(self, base_url: str, ca_file: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 300.0, transport: httpx.BaseTransport | None = None):
        self.base = base_url.rstrip("/")
        self.transport = transport if transport is not None else PooledTransport(
            self.base, ssl.create_default_context(cafile=ca_file) if ca_file else None,
            connect_timeout, read_timeout)

    def open(self, method: str, path: str, query: bytes, headers: list[tuple[str, str]],
             body: Iterator[bytes] | None, content_length: str | None) -> httpx.Response:
        """Send the request and return the answer with its body not yet read (streamed)."""
        url = self.base + path + (("?" + query.decode("latin-1")) if query else "")
        if content_length is not None:
            headers = [*headers, ("Content-Length", content_length)]
        return self.transport.handle_request(httpx.Request(method, url, headers=headers, content=body))


def body_iter(stream: Any, chunk: int = CHUNK) -> Iterator[bytes]:
    """The request body as chunks read as they come (never the whole body in memory)."""
    while True:
        data = stream.read(chunk)
        if not data:
            return
        yield data


def header_items(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), str(v)) for k, v in items]
