"""gunicorn's gthread worker with two hand-offs less per request: a kept-alive connection stays in its
thread for a moment after a request, and a response's header block leaves with its first body bytes.

Why: in gthread, every request on a kept-alive connection crosses threads twice.  The main thread's
poller sees the socket readable and hands the connection to a pool thread; when the response is
sent, the pool thread hands it back (a pipe write) and the main thread registers it with the poller
again.  On two cores that is two wake-ups, a pipe round trip and two ``epoll_ctl`` per request, and
it was most of the gateway's remaining latency over Orthanc's own server (docs/performance.md).
Browsers and viewers send their requests in bursts on the same connections, so the pool thread now
waits up to :data:`LINGER_SECONDS` for the next request on the connection it just served and, if
one comes, serves it at once; if none comes the connection goes back to the poller as before.

Bounded so it never starves other connections: a thread lingers only while another thread of the
pool is free (a new connection or a kept-alive one waking up is served by that one), never while
the worker is stopping, and never longer than :data:`LINGER_SECONDS`.  TLS data already decrypted
(``SSLSocket.pending``) or bytes the parser read ahead count as a request waiting.

Headers and body in one write: gunicorn sends a response's header block, then its body, in two
writes (two TLS records, two loopback deliveries that each wake the client).  A small answer now
goes out in one: the header block is held until the first body bytes (or the end of the response,
or any error) and sent with them.  Nothing is held across a read: the response is complete on the
wire before the worker reads the next request.  ``100 Continue`` is not held (gunicorn sends it
with ``send``, before the application runs).
"""

from __future__ import annotations

import contextlib
import select
import ssl
import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: how long a pool thread waits for the next request on the connection it just served
LINGER_SECONDS = 0.02


class LingeringThreadWorker(ThreadWorker):
    """:class:`ThreadWorker` whose pool threads serve a connection's next request themselves when it
    follows within :data:`LINGER_SECONDS` and another pool thread is free."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0
        self._busy_lock = threading.Lock()

    def handle(self, conn: Any) -> Any:
        with self._busy_lock:
            self._busy += 1
        try:
            result = super().handle(conn)
            while (result is True and self.alive and self._may_linger()
                   and _next_request_within(conn, LINGER_SECONDS)
                   and self.alive and self._may_linger()):  # again: a connection may be queued by now
                result = super().handle(conn)
            return result
        finally:
            with self._busy_lock:
                self._busy -= 1

    def handle_request(self, req: Any, conn: Any) -> Any:
        """gthread's, writing through a :class:`_HeldHeaders` socket (flushed before returning)."""
        sock = conn.sock
        held = _HeldHeaders(sock)
        conn.sock = held  # what the response writes to; the parser keeps the real socket
        try:
            result = super().handle_request(req, conn)
        except BaseException:
            conn.sock = sock
            with contextlib.suppress(OSError):  # the error is what matters (the socket may be closed)
                held.flush()
            raise
        conn.sock = sock
        held.flush()
        return result

    def _may_linger(self) -> bool:
        """Another pool thread is free to serve whatever else arrives meanwhile."""
        return self._busy < self.cfg.threads


def _next_request_within(conn: Any, seconds: float) -> bool:
    """Whether ``conn`` has (the start of) another request within ``seconds``; never consumes it."""
    parser = getattr(conn, "parser", None)
    unreader = getattr(parser, "unreader", None)
    buffered = getattr(unreader, "buf", None)
    if buffered is not None and buffered.getvalue():
        return True  # read ahead with the previous request
    sock = conn.sock
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # decrypted already, the kernel would not say readable
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(seconds * 1000.0))
    except (OSError, ValueError):  # closed meanwhile: the poller path will find out
        return False


#: a first body write larger than this is sent after the held header block, not copied behind it
_JOIN_LIMIT = 64 * 1024


class _HeldHeaders:
    """The connection's socket for one response: its first write, if it is a header block
    (``HTTP/...`` up to the blank line), is held and sent with the next write or by :meth:`flush`;
    every other write goes straight through."""

    __slots__ = ("_first", "_held", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._held = b""
        self._first = True

    def sendall(self, data: Any) -> None:
        if self._first:
            self._first = False
            if isinstance(data, bytes) and data.startswith(b"HTTP/") and data.endswith(b"\r\n\r\n"):
                self._held = data
                return
        elif self._held:
            held, self._held = self._held, b""
            if len(data) <= _JOIN_LIMIT:
                self._sock.sendall(held + bytes(data))  # one TLS record, one segment
                return
            self._sock.sendall(held)
        self._sock.sendall(data)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            self._sock.sendall(held)

    def __getattr__(self, name: str) -> Any:  # send, close, fileno...: the real socket's
        return getattr(self._sock, name)
