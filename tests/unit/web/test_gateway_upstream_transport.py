"""The gateway's kept-alive connections to Orthanc (bridge/web/gateway/upstream_transport.py), against a
real HTTP/1.1 server on loopback: reuse, a connection the server closed while idle, streamed uploads
(with a length and chunked), abandoned answers, HEAD, timeouts.  TLS to the real Orthanc is covered
by every gateway integration test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bridge.web.gateway.upstream_transport import PooledTransport


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1
        self.server.sockets.append(self.connection)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self, body: bytes, head: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, self.headers))
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        size = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/big/") else 2
        self._answer(b"x" * size if size != 2 else b"ok")

    def do_HEAD(self) -> None:
        self.server.seen.append(("HEAD", self.path, self.headers))
        self._answer(b"ok", head=True)

    def do_POST(self) -> None:
        if self.path.startswith("/refuse"):  # as Orthanc's filter: answered without reading the body
            self.server.seen.append(("POST", self.path, self.headers))
            self._answer(b"refused")
            return
        body = self._body()
        self.server.seen.append(("POST", self.path, self.headers))
        self.server.bodies.append(body)
        self._answer(str(len(body)).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.seen: list[tuple[str, str, Any]] = []
        self.bodies: list[bytes] = []


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _transport(srv: _Server, read_timeout: float = 5.0) -> PooledTransport:
    return PooledTransport(f"http://127.0.0.1:{srv.server_address[1]}", None, 2.0, read_timeout)


def _get(t: PooledTransport, srv: _Server, path: str, method: str = "GET") -> httpx.Response:
    resp = t.handle_request(httpx.Request(method, f"http://127.0.0.1:{srv.server_address[1]}{path}"))
    resp.read()
    resp.close()
    return resp


def test_a_connection_is_kept_alive_between_requests(server: _Server) -> None:
    t = _transport(server)
    for _ in range(5):
        assert _get(t, server, "/studies/1").content == b"ok"
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_not_used(server: _Server) -> None:
    t = _transport(server)
    assert _get(t, server, "/a").status_code == 200
    for sock in server.sockets:  # Orthanc's keep-alive timeout, as seen from the pool
        sock.shutdown(socket.SHUT_RDWR)
    time.sleep(0.05)
    assert _get(t, server, "/b").content == b"ok"
    assert server.connections == 2


def test_an_abandoned_answer_closes_its_connection(server: _Server) -> None:
    """The rest of a half-read answer is still on the wire: that connection must never carry the
    next request (it would read the old answer's bytes as its own)."""
    t = _transport(server)
    url = f"http://127.0.0.1:{server.server_address[1]}/big/{4 * 1024 * 1024}"
    resp = t.handle_request(httpx.Request("GET", url))
    next(iter(resp.iter_raw(1024)))
    resp.close()
    assert _get(t, server, "/after").content == b"ok"
    assert server.connections == 2


def test_a_big_answer_streams_whole(server: _Server) -> None:
    t = _transport(server)
    url = f"http://127.0.0.1:{server.server_address[1]}/big/{3 * 1024 * 1024 + 7}"
    resp = t.handle_request(httpx.Request("GET", url))
    assert sum(len(c) for c in resp.iter_raw(256 * 1024)) == 3 * 1024 * 1024 + 7
    resp.close()
    assert _get(t, server, "/next").content == b"ok"
    assert server.connections == 1


def test_head_keeps_the_connection(server: _Server) -> None:
    t = _transport(server)
    assert _get(t, server, "/x", method="HEAD").content == b""
    assert _get(t, server, "/y").content == b"ok"
    assert server.connections == 1


def _pieces(n: int, size: int, taken: list[int]) -> Iterator[bytes]:
    for _ in range(n):
        taken[0] += 1
        yield b"u" * size


def test_an_upload_with_a_length_is_streamed(server: _Server) -> None:
    t = _transport(server)
    taken = [0]
    req = httpx.Request("POST", f"http://127.0.0.1:{server.server_address[1]}/instances",
                        headers=[("Content-Length", str(8 * 65536))], content=_pieces(8, 65536, taken))
    resp = t.handle_request(req)
    resp.read()
    assert resp.content == str(8 * 65536).encode() and server.bodies[-1] == b"u" * (8 * 65536)
    assert "Transfer-Encoding" not in server.seen[-1][2]


def test_an_upload_without_a_length_is_sent_chunked(server: _Server) -> None:
    t = _transport(server)
    req = httpx.Request("POST", f"http://127.0.0.1:{server.server_address[1]}/instances",
                        content=_pieces(5, 1000, [0]))
    resp = t.handle_request(req)
    resp.read()
    assert server.seen[-1][2].get("Transfer-Encoding") == "chunked"
    assert server.bodies[-1] == b"u" * 5000
    assert _get(t, server, "/after-upload").content == b"ok"
    assert server.connections == 2  # a connection that carried a body is never reused


def test_headers_go_as_given_repeated_ones_included(server: _Server) -> None:
    t = _transport(server)
    req = httpx.Request("GET", f"http://127.0.0.1:{server.server_address[1]}/h?x=1&x=2",
                        headers=[("Authorization", "Bearer abc"), ("X-Repeat", "a"), ("X-Repeat", "b")])
    t.handle_request(req).read()
    _, path, headers = server.seen[-1]
    assert path == "/h?x=1&x=2" and headers["Authorization"] == "Bearer abc"
    assert headers.get_all("X-Repeat") == ["a", "b"]
    assert "Accept-Encoding" not in headers  # http.client adds none of its own


def test_the_read_timeout_is_enforced(server: _Server) -> None:
    t = _transport(server, read_timeout=0.2)
    with pytest.raises(TimeoutError):
        _get(t, server, "/slow")


def test_an_unreachable_orthanc_raises() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t = PooledTransport(f"http://127.0.0.1:{port}", None, 1.0, 1.0)
    with pytest.raises(OSError):
        t.handle_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))


SMUGGLED = (b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Pacs-Bridge-Workstation: 6.6.6.6\r\n"
            b"Content-Length: 0\r\nX-Swallow: ")


def test_a_body_orthanc_left_unread_never_becomes_the_next_request(server: _Server) -> None:
    """Orthanc's filter refuses a POST without reading its body; a body that is itself a request
    must not run as the next request on that connection (with whoever's token comes next)."""
    t = _transport(server)
    req = httpx.Request("POST", f"http://127.0.0.1:{server.server_address[1]}/refuse",
                        headers=[("Content-Length", str(len(SMUGGLED)))], content=iter([SMUGGLED]))
    resp = t.handle_request(req)
    resp.read()
    resp.close()
    assert _get(t, server, "/victim").content == b"ok"  # its own answer...
    assert server.connections == 2  # ...on a connection of its own: nothing was appended to the body


def test_a_body_shorter_than_its_length_is_never_half_sent(server: _Server) -> None:
    """A client that declares 40 bytes and stops after 10 (the server hands the app a short read):
    Orthanc would wait for 30 more and take the next request on the connection as them."""
    t = _transport(server)
    req = httpx.Request("POST", f"http://127.0.0.1:{server.server_address[1]}/refuse",
                        headers=[("Content-Length", "40")], content=iter([b"x" * 10]))
    with pytest.raises(ValueError, match="shorter"):
        t.handle_request(req)
    assert _get(t, server, "/victim").content == b"ok"
    assert server.seen[-1][1] == "/victim"
    too_long = httpx.Request("POST", f"http://127.0.0.1:{server.server_address[1]}/instances",
                             headers=[("Content-Length", "4")], content=iter([b"x" * 10]))
    with pytest.raises(ValueError, match="longer"):
        t.handle_request(too_long)


def test_only_a_safe_method_is_sent_again_after_a_stale_connection(server: _Server,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept-alive connection that fails once the request went out: a GET is sent again on a new
    connection, a DELETE is not (it may have run)."""
    import http.client

    from bridge.web.gateway import upstream_transport as ut

    real = ut._exchange
    failures = [0]

    def once_disconnected(conn: Any, request: httpx.Request, body: Any) -> Any:
        if conn.sock is not None and t._fail_next:
            t._fail_next = False
            failures[0] += 1
            raise http.client.RemoteDisconnected("closed while idle")
        return real(conn, request, body)

    t = _transport(server)
    monkeypatch.setattr(ut, "_exchange", once_disconnected)
    for method, retried in (("GET", True), ("DELETE", False)):
        t._fail_next = False
        assert _get(t, server, "/warm").status_code == 200  # a pooled connection to fail on
        t._fail_next = True
        if retried:
            assert _get(t, server, "/again", method=method).content == b"ok"
        else:
            with pytest.raises(http.client.RemoteDisconnected):
                t.handle_request(httpx.Request(method, f"http://127.0.0.1:{server.server_address[1]}/studies/1"))
    assert failures[0] == 2
