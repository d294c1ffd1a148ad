"""Bounded auditing of refused calls to an unauthenticated endpoint (``/backchannel-logout``).

Every refusal is an access decision and belongs in the audit trail, but the endpoint is open to
anyone who can reach it: one audit record per refused call would let a flood fill the audit store
(and the syslog collector behind it).  So per window of ``window_seconds`` the first ``sample``
refusals are audited in full and the rest only counted; when the window closes, one summary event
says how many were left out.  Memory and audit volume are bounded whatever the request rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

Emit = Callable[[Mapping[str, Any]], None]


class SampledRejections:
    """Callable ``(details)``: audit through ``emit`` at most ``sample`` times per window, count the rest."""

    def __init__(self, emit: Emit, what: str, sample: int = 10, window_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, timer: bool = True):
        self.emit = emit
        self.what = what
        self.sample = sample
        self.window_seconds = window_seconds
        self.clock = clock
        self.timer = timer  # tests drive the window with ``clock`` and call ``flush`` themselves
        self._lock = threading.Lock()
        self._start = clock()
        self._emitted = 0
        self._suppressed = 0
        self._pending: threading.Timer | None = None

    def __call__(self, details: Mapping[str, Any]) -> None:
        summary = None
        with self._lock:
            if self.clock() - self._start >= self.window_seconds:
                summary = self._roll()
            if self._emitted < self.sample:
                self._emitted += 1
                full: Mapping[str, Any] | None = details
            else:
                self._suppressed += 1
                full = None
                if self._suppressed == 1 and self.timer:
                    self._pending = threading.Timer(self.window_seconds, self.flush)
                    self._pending.daemon = True
                    self._pending.start()
        if summary:
            self.emit(summary)
        if full is not None:
            self.emit(full)

    def _roll(self) -> dict[str, Any] | None:
        """Close the window (lock held): the summary of what it left out, if anything."""
        left_out, self._suppressed, self._emitted, self._start = self._suppressed, 0, 0, self.clock()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if not left_out:
            return None
        return {"reason": f"{self.what}: {left_out} more refused calls not audited one by one "
                          f"(at most {self.sample} per {int(self.window_seconds)} s)", "suppressed": left_out}

    def flush(self) -> None:
        """Close the current window now and emit its summary (the timer calls this)."""
        with self._lock:
            summary = self._roll()
        if summary:
            self.emit(summary)

    @property
    def suppressed(self) -> int:
        return self._suppressed
