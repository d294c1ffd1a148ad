"""The gateway's connection to Orthanc: kept-alive ``http.client`` connections behind httpx's models.

Why not ``httpx.Client``: its request pipeline (URL and header models, auth and redirect hooks,
httpcore's pool, h11's parser) cost about 0.35 ms per request on the test machine against 0.1 ms
for the standard library's ``http.client`` on the same kept-alive TLS connection, and the gateway's
added latency is the product's figure (issue 11: < 1.5 ms median).  The gateway still speaks in
``httpx.Request`` / ``httpx.Response`` (streamed both ways), so this is an ``httpx.BaseTransport``:
the unit tests put an Orthanc double in its place, the proxy code does not change.

What it guarantees:

* one request per connection at a time; a connection goes back to the pool only after its answer
  was read to the end and neither side asked to close it (an answer abandoned half-way, e.g. a
  browser that left during an archive, closes its connection);
* a connection that carried a request body is never reused (Orthanc answers some requests -- a
  refusal by its filter, a GET -- without reading their body, and the unread rest would be parsed
  as the next request on the connection: request smuggling with another user's token);
* a pooled connection that Orthanc closed meanwhile (its keep-alive timeout) is found before use
  (readable while idle, or bytes waiting in TLS = closed or garbage) and dropped; if a GET or HEAD
  still fails on one, it is sent again once on a new connection; a failed connection is never reused;
* a request body (an upload) is streamed: ``Content-Length`` as given and enforced (a body shorter
  or longer than declared is an error, never a half-sent request), else chunked;
* connect and read timeouts are separate (the read timeout is per read: a long archive is not cut).
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

import httpx

#: idle connections kept (a worker has a few threads; more would only hold Orthanc's threads)
MAX_IDLE = 20
#: an answer is read in pieces of this size (the proxy re-chunks them for the browser)
READ_CHUNK = 256 * 1024
#: methods a retry cannot make run twice with another effect
_IDEMPOTENT = frozenset({"GET", "HEAD"})
#: errors of a kept-alive connection the server closed while it was idle
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError,
          http.client.BadStatusLine)


class _Answer(httpx.SyncByteStream):
    """The answer's body as it arrives; gives the connection back when read to the end, if
    ``reusable`` (the request carried no body: Orthanc answers some requests without reading their
    body -- a refusal by its filter, any GET -- and what it left unread would be parsed as the next
    request on that connection)."""

    def __init__(self, pool: PooledTransport, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 reusable: bool):
        self.pool, self.conn, self.resp = pool, conn, resp
        self.reusable = reusable
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.resp.read(READ_CHUNK)
            if not data:
                self._finish()
                return
            yield data

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.reusable and self.resp.isclosed() and not self.resp.will_close:
            self.pool.give_back(self.conn)
        else:
            self.conn.close()

    def close(self) -> None:
        if not self.done:  # abandoned before the end: the rest of the answer is still on the wire
            self.done = True
            self.conn.close()


class PooledTransport(httpx.BaseTransport):
    """Orthanc at ``base_url`` over a small pool of kept-alive connections."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float, max_idle: int = MAX_IDLE):
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        if not parts.hostname:
            raise ValueError(f"gateway.orthanc_url: no host in {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.ssl_context = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if self.https else None)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: deque[http.client.HTTPConnection] = deque()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the pool

    def _new(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request's pieces leave at once
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _take(self) -> http.client.HTTPConnection | None:
        """A kept-alive connection still open, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            sock = conn.sock
            if sock is None:
                continue
            try:
                poller = select.poll()  # not select.select: descriptors above 1023 are common in a worker
                poller.register(sock, select.POLLIN)
                readable = bool(poller.poll(0)) or bool(getattr(sock, "pending", lambda: 0)())  # TLS-buffered
            except (OSError, ValueError):
                readable = True
            if readable:  # closed by Orthanc (EOF) or unexpected bytes: never reuse
                conn.close()
                continue
            return conn

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ one exchange

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = _Body(request.stream)  # type: ignore[arg-type]
        reusable = not _has_body(request)
        conn = self._take()
        if conn is not None:
            try:
                resp = _exchange(conn, request, body)
            except BaseException as exc:
                conn.close()  # whatever failed, this connection's state is unknown: never reused
                # sent again only if it cannot have run twice: a safe method, nothing of a body gone
                if not (isinstance(exc, _STALE) and request.method in _IDEMPOTENT and not body.started):
                    raise
            else:
                return httpx.Response(resp.status, headers=resp.getheaders(),
                                      stream=_Answer(self, conn, resp, reusable), request=request)
        conn = self._new()
        try:
            resp = _exchange(conn, request, body)
        except BaseException:
            conn.close()
            raise
        return httpx.Response(resp.status, headers=resp.getheaders(), stream=_Answer(self, conn, resp, reusable),
                              request=request)


def _has_body(request: httpx.Request) -> bool:
    length = request.headers.get("content-length")
    return request.headers.get("transfer-encoding") is not None or (length is not None and length != "0")


class _Body:
    """The request body, with a note of whether any of it was consumed."""

    def __init__(self, stream: Iterable[bytes]):
        self.stream = stream
        self.started = False

    def chunks(self) -> Iterator[bytes]:
        for chunk in self.stream:
            self.started = True
            if chunk:
                yield chunk


def _exchange(conn: http.client.HTTPConnection, request: httpx.Request, body: _Body) -> http.client.HTTPResponse:
    """Send ``request`` on ``conn`` (headers as given: httpx set Host and the body's framing)."""
    conn.putrequest(request.method, request.url.raw_path.decode("ascii"), skip_host=True,
                    skip_accept_encoding=True)
    chunked = False
    has_length = False
    for name, value in request.headers.raw:
        low = name.lower()
        if low == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
        elif low == b"content-length":
            has_length = True
        conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
    conn.endheaders()
    if chunked:
        for chunk in body.chunks():
            conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    elif has_length:
        declared = int(request.headers["content-length"])
        sent = 0
        for chunk in body.chunks():
            sent += len(chunk)
            if sent > declared:
                raise ValueError("request body longer than its Content-Length")
            conn.send(chunk)
        if sent != declared:  # a client that stopped early: Orthanc would wait for the rest
            raise ValueError("request body shorter than its Content-Length")
    return conn.getresponse()
