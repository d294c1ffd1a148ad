"""A per-worker cache of gateway sessions, invalidated by PostgreSQL notifications.

Why: every proxied request needs its session, and reading the row from PostgreSQL (over TLS) was
the largest part of what the gateway added to a request (docs/performance.md, issue 11's latency
target).  A cache is only acceptable if a logout, a back-channel logout or an idle end on another
worker or replica stops the session at once, so the cache is tied to PostgreSQL's LISTEN/NOTIFY:

* every change that ends or renews a session sends ``pg_notify(CHANNEL, <id hash>)`` inside the
  same transaction (:class:`bridge.web.gateway.sessions.SessionStore`), so the notification goes out
  exactly when the change commits, to every worker of every replica;
* each worker process has one listener thread on its own connection; a notification drops that
  session from the worker's cache (the next request reads the row again);
* the cache is used only while the listener is *live*: connected, listening, its own
  notification come back (so notifications do arrive: a pooler in transaction mode, for one, would
  swallow them), and emptied at that moment (nothing missed before is kept).  The listener pings
  itself that way every ``ping_every`` seconds; a ping not back in time or a broken connection
  makes it not live and empties it; until the listener is back every request reads the row, as
  without a cache;
* a lookup racing an invalidation is not stored (a generation counter: a row read before a
  notification arrived is never cached after it);
* an entry is also bounded in age (``max_age``, default 5 s): the safety net for a change made
  outside the bridge (SQL by hand) or a notification lost between two pings.

Left to the caller: an entry that looks idle-expired is re-read before the session is ended
(another worker may have recorded activity the cache has not seen).

SQLite has no notifications: the store reads its (local, fast) file on every request instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

#: the PostgreSQL notification channel of gateway session changes
CHANNEL = "pacs_bridge_gateway_sessions"
#: a payload that drops every cached session (a bulk change, e.g. a key rotation)
FLUSH_ALL = "*"
#: a listener's notification to itself (proof that notifications arrive); never a session's id hash
PING_PREFIX = "ping:"
#: at most this many sessions per worker (all dropped when full: the next requests read again)
MAX_ENTRIES = 4096

T = TypeVar("T")


class SessionCache(Generic[T]):
    """id hash -> (stored at, value), usable only while the listener is live in this process."""

    def __init__(self, connect: Callable[[], Any], *, max_age: float = 5.0, ping_every: float = 2.0,
                 retry_after: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.connect = connect
        self.max_age = max_age
        self.ping_every = ping_every
        self.retry_after = retry_after
        self.clock = clock
        self._entries: dict[str, tuple[float, T]] = {}
        self._generation = 0
        self._live = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        #: the database server process of the listener's connection (diagnostics and tests)
        self.backend_pid: int | None = None

    # ------------------------------------------------------------------ the request path

    def live(self) -> bool:
        return self._live and self._pid == os.getpid()

    def lookup(self, id_hash: str) -> T | None:
        """The cached session, if the cache is live and the entry young enough."""
        if not self.live():
            return None
        hit = self._entries.get(id_hash)
        if hit is None:
            return None
        if self.clock() - hit[0] > self.max_age:
            self._entries.pop(id_hash, None)
            return None
        return hit[1]

    def generation(self) -> int:
        """Taken before a read: :meth:`put` stores the result only if nothing was invalidated since."""
        return self._generation

    def put(self, id_hash: str, value: T, generation: int) -> None:
        with self._lock:
            if not self.live() or generation != self._generation:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[id_hash] = (self.clock(), value)

    def replace(self, id_hash: str, value: T) -> None:
        """This worker changed the session itself (its activity clock): keep the entry's age."""
        with self._lock:
            hit = self._entries.get(id_hash)
            if hit is not None:
                self._entries[id_hash] = (hit[0], value)

    def invalidate(self, id_hash: str) -> None:
        with self._lock:
            self._generation += 1
            if id_hash == FLUSH_ALL:
                self._entries.clear()
            else:
                self._entries.pop(id_hash, None)

    # ------------------------------------------------------------------ the listener

    def ensure_listening(self) -> None:
        """Start this process's listener thread if it has none (cheap when it runs: the request path
        calls it)."""
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == os.getpid() and thread.is_alive():
                return
            self._live = False
            self._entries.clear()
            self._generation += 1
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=_listen, args=(weakref.ref(self),),
                                            name="pacs-bridge-session-cache", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._live = False

    def _set_live(self, live: bool) -> None:
        with self._lock:
            self._live = live
            self._generation += 1
            self._entries.clear()


def _ping(cur: Any) -> str:
    """Send this listener a notification of its own; returns the payload to wait for."""
    payload = PING_PREFIX + secrets.token_hex(8)
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
    return payload


def _listen(ref: weakref.ref[SessionCache[Any]]) -> None:
    """The listener loop: (re)connect, LISTEN, prove that notifications arrive (its own ping comes
    back), then drain them, pinging itself every ``ping_every`` seconds; a ping that does not come
    back in time (a dead connection, or a path that drops notifications such as a pooler in
    transaction mode), like any failure, makes the cache not live (and empty) until it listens again."""
    while True:
        cache = ref()
        if cache is None or cache._stop.is_set():
            return
        conn = None
        try:
            conn = cache.connect()
            dbapi = conn.dbapi_connection
            dbapi.autocommit = True
            cur = dbapi.cursor()
            cur.execute(f"LISTEN {CHANNEL}")
            cache.backend_pid = getattr(dbapi, "get_backend_pid", lambda: None)()
            ping_every, stop = cache.ping_every, cache._stop
            del cache
            poller = select.poll()  # not select.select: a worker may hold descriptors above 1023
            poller.register(dbapi.fileno(), select.POLLIN)
            awaited: str | None = _ping(cur)
            deadline = time.monotonic() + ping_every
            live = False
            while True:
                cache = ref()
                if cache is None:
                    return
                while dbapi.notifies:
                    payload = str(dbapi.notifies.pop(0).payload)
                    if payload == awaited:
                        awaited = None
                        if not live:  # emptied now: nothing missed before this point is kept
                            cache._set_live(live := True)
                    elif not payload.startswith(PING_PREFIX):  # other workers' pings change nothing
                        cache.invalidate(payload)
                del cache
                now = time.monotonic()
                if now >= deadline:
                    if awaited is not None:
                        raise TimeoutError("the listener's own notification did not come back")
                    awaited = _ping(cur)
                    deadline = now + ping_every
                    continue
                readable = poller.poll(max(1, int((deadline - now) * 1000)))
                if stop.is_set():
                    return
                if readable:
                    dbapi.poll()
        except Exception as exc:  # the database went away: no cache until the listener is back
            cache = ref()
            if cache is None:
                return
            cache._set_live(False)
            log.warning("gateway: session cache listener lost its database connection (%s); every "
                        "request reads its session until it is back", type(exc).__name__)
            retry_after = cache.retry_after
            del cache
            time.sleep(retry_after)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):  # closing a broken connection may fail too
                    conn.invalidate()
