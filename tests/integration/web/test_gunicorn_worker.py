"""bridge/web/gunicorn_worker.py under a real gunicorn (its own, on loopback, TLS as the bridge runs it):
a kept-alive connection's requests, one after another, pipelined or with a pause longer than the
linger, are each answered once and in order; a thread lingering on one connection never holds up
another connection's request; with one thread per worker nothing lingers."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.web.gunicorn_worker import LINGER_SECONDS

pytestmark = pytest.mark.integration

APP = textwrap.dedent('''
    def app(environ, start_response):
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=[2, 1], ids=["2-threads", "1-thread"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    from pacs_devstack import tls

    (tmp_path / "linger_app.py").write_text(APP)
    pair = tls.issue("linger-test")
    port = _free_port()
    argv = [str(Path(sys.executable).with_name("gunicorn")), "--workers", "1", "--threads", str(request.param),
            "--worker-class", "bridge.web.gunicorn_worker.LingeringThreadWorker", "--bind", f"127.0.0.1:{port}",
            "--certfile", str(pair.cert), "--keyfile", str(pair.key), "--no-control-socket",
            "--chdir", str(tmp_path), "linger_app:app"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(tls.ensure_ca()))
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"gunicorn did not start: {proc.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    yield port, context
    proc.terminate()
    proc.wait(timeout=10)


def _connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(sock, server_hostname="localhost")


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def _responses(sock: ssl.SSLSocket, count: int) -> list[bytes]:
    """The bodies of ``count`` responses read off ``sock`` (Content-Length framed)."""
    data, bodies = b"", []
    while len(bodies) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(bodies)} responses"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(data) < length:
            data += sock.recv(65536)
        bodies.append(data[:length])
        data = data[length:]
    assert data == b"", "an answer more than asked"
    return bodies


def test_requests_on_one_connection_back_to_back_paused_and_pipelined(server: tuple[int, ssl.SSLContext]) -> None:
    port, context = server
    with _connect(port, context) as sock:
        for i in range(20):  # back to back: within the linger
            sock.sendall(_get(f"/a{i}"))
            assert _responses(sock, 1) == [f"/a{i}".encode()]
        time.sleep(LINGER_SECONDS * 5)  # longer than the linger: the connection went back to the poller
        sock.sendall(_get("/after-pause"))
        assert _responses(sock, 1) == [b"/after-pause"]
        sock.sendall(b"".join(_get(f"/p{i}") for i in range(5)))  # pipelined: read ahead with the first
        assert _responses(sock, 5) == [f"/p{i}".encode() for i in range(5)]


def test_a_lingering_thread_never_holds_up_another_connection(server: tuple[int, ssl.SSLContext]) -> None:
    """A connection just served (its thread may linger on it): a second connection's request is
    answered at once, by the other thread (2 threads) or after the linger at most (1 thread never
    lingers)."""
    port, context = server
    with _connect(port, context) as idle:
        idle.sendall(_get("/first"))
        assert _responses(idle, 1) == [b"/first"]
        started = time.monotonic()
        with _connect(port, context) as second:  # (gthread reads a new connection's request in its thread)
            second.sendall(_get("/second"))
            assert _responses(second, 1) == [b"/second"]
        assert time.monotonic() - started < 0.5 + LINGER_SECONDS
        idle.sendall(_get("/again"))  # and the first connection still works
        assert _responses(idle, 1) == [b"/again"]

