"""gunicorn's gthread worker, keeping a kept-alive connection in its thread for a moment after a request.

Why: in gthread, every request on a kept-alive connection crosses threads twice.  The main thread's
poller sees the socket readable and hands the connection to a pool thread; when the response is
sent, the pool thread hands it back (a pipe write) and the main thread registers it with the poller
again.  On two cores that is two wake-ups, a pipe round trip and two ``epoll_ctl`` per request, and
it was 0.3-0.6 ms of the gateway's added latency over a direct Orthanc request (docs/performance.md).
Browsers and viewers send their requests in bursts on the same connections, so the pool thread now
waits up to :data:`LINGER_SECONDS` for the next request on the connection it just served and, if
one comes, serves it at once; if none comes the connection goes back to the poller as before.

Bounded so it never starves other connections: a thread lingers only while another thread of the
pool is free (a new connection or a kept-alive one waking up is served by that one), never while
the worker is stopping, and never longer than :data:`LINGER_SECONDS`.  TLS data already decrypted
(``SSLSocket.pending``) or bytes the parser read ahead count as a request waiting.
"""

from __future__ import annotations

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

