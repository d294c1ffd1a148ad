"""Helper threads that share the AES-GCM work of one large body with the thread that needs it.

Why: a read of the encrypted image store waits for the decryption of the whole attachment
(AES-256-GCM runs at ~3.5 GB/s on one core: 0.6 ms per 2 MB), while the machine's other cores may
be idle.  A body sealed in segments (envelope format 2, :mod:`bridge.core.envelope`) lets them
help: every segment is its own AES-GCM call, and OpenSSL's calls (through cryptography's CFFI)
release the GIL, so segments on two threads can run on two cores at once.

**Off by default** (:data:`ENV_VAR` turns it on): on the 2-vCPU Firecracker VM this was measured
on (issue 12, docs/performance.md), handing a segment to another thread did not pay: the guest
kernel packs a woken thread onto the waker's vCPU (``sched_vcpu_pack``) and an idle vCPU takes
50-350 µs to wake (no guest halt-polling), so the helper mostly ran *after* the caller, not beside
it: 0.5 MB reads got slower, 2 MB reads no faster inside Orthanc (median of 200 reads each).  On
hosts where a thread wakes in a few microseconds it should halve the decryption of large bodies.

How: the caller hands a job (a list of tasks) to the helpers *and works on it itself*; every
thread takes the next task nobody took yet.  So a helper that is busy with another caller's job,
or slow to wake, never delays anyone: the caller does the rest and the helper, when it gets to the
job, finds nothing left.  The caller returns once every task has finished (the last one to finish
releases the job's lock) and re-raises the first error.  The tasks of one job write disjoint parts
of one buffer; nothing is shared between jobs.

Stdlib only (it runs inside Orthanc under Debian's Python).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Sequence

#: at most this many helper threads per process, whatever the number of cores
MAX_HELPERS = 3


#: the environment variable that sets the number of helper threads (unset or 0: none, every segment on the caller)
ENV_VAR = "PACS_BRIDGE_CRYPTO_HELPERS"


def default_helpers() -> int:
    """:data:`ENV_VAR` if set to a number (at most :data:`MAX_HELPERS`; at most one per core beyond
    the caller's own), else 0: see the module docstring for why it is off by default."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value.isdigit():
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(MAX_HELPERS, int(value), cores - 1))


class _Job:
    """Tasks taken one by one by whichever thread asks next (``next`` on a count is atomic under the GIL)."""

    __slots__ = ("_done", "_left", "_lock", "_next", "error", "tasks")

    def __init__(self, tasks: Sequence[Callable[[], None]]):
        self.tasks = tasks
        self.error: BaseException | None = None
        self._next = itertools.count()
        self._left = len(tasks)
        self._lock = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()

    def work(self) -> None:
        tasks, n = self.tasks, len(self.tasks)
        while (i := next(self._next)) < n:
            if self.error is None:  # after a failure the rest is skipped: the result is thrown away
                try:
                    tasks[i]()
                except BaseException as exc:
                    if self.error is None:
                        self.error = exc
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                self.tasks = ()  # a helper that comes to the job late finds nothing, holds nothing
                self._done.release()

    def wait(self) -> None:
        self._done.acquire()


class Helpers:
    """A few daemon threads, started at the first job that can use them."""

    def __init__(self, threads: int | None = None):
        self.threads = default_helpers() if threads is None else max(0, threads)
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = 0
        self._start_lock = threading.Lock()

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run every task, the calling thread included; raise the first task's error, if any, after
        all have finished or been skipped (so no task still writes into the caller's buffer)."""
        if self.threads == 0 or len(tasks) < 2:
            for task in tasks:
                task()
            return
        self._start()
        job = _Job(tasks)
        for _ in range(min(self.threads, len(tasks) - 1)):
            self._queue.put(job)
        job.work()
        job.wait()
        if job.error is not None:
            raise job.error

    def _start(self) -> None:
        if self._started >= self.threads:
            return
        with self._start_lock:
            while self._started < self.threads:
                self._started += 1
                threading.Thread(target=self._loop, name=f"pacs-bridge-crypto-{self._started}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._queue.get().work()


#: the process's helpers (the storage area's reads and writes share them)
HELPERS = Helpers()
