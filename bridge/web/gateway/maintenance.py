"""The gateway's housekeeping, off the request path: one daemon thread per worker process.

Why: two periodic jobs used to run inside whichever request happened to come when they were due,
and that request paid for them (the p99 of the gateway): reloading the subject revocation
watermarks (a query every couple of seconds per worker) and sweeping sessions nobody came back to
(a query, then for each such session a revocation and a call to Keycloak's end-session endpoint).
Here a thread does both ahead of time, so a request finds the watermarks fresh in memory.

Nothing about a decision moves here: the request path still checks its session (a logout anywhere
counts at once: bridge/web/gateway/session_cache.py) and the watermarks it finds; if this
thread stalls or dies, the watermark cache expires and the request reloads it itself, as before
(fail safe), and the next request starts a new thread.  The thread holds only a weak reference to
the gateway, so an app that goes away (tests build many) lets its thread end.

The thread starts lazily, on a worker's first gateway request, and again after a fork (the web server's
workers; the process id is checked), never at import.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Maintenance:
    """Runs ``task(owner)`` every ``period`` seconds in a daemon thread while ``owner`` lives."""

    def __init__(self, task: Callable[[Any], None], period: float, name: str = "pacs-bridge-gateway"):
        self.task = task
        self.period = period
        self.name = name
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.runs = 0

    def running(self) -> bool:
        thread = self._thread
        return thread is not None and self._pid == os.getpid() and thread.is_alive()

    def ensure_running(self, owner: Any) -> None:
        """Start the thread if this process has none alive (the request path calls this: two
        attribute reads when it runs)."""
        if self.running():
            return
        with self._lock:
            if self.running():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, args=(weakref.ref(owner),), name=self.name,
                                            daemon=True)
            self._thread.start()

    def _loop(self, ref: weakref.ref[Any]) -> None:
        while True:
            owner = ref()
            if owner is None:
                return
            started = time.monotonic()
            try:
                self.task(owner)
            except Exception:  # housekeeping must go on: the next round tries again
                log.exception("gateway: housekeeping failed")
            self.runs += 1
            del owner
            time.sleep(max(0.05, self.period - (time.monotonic() - started)))
