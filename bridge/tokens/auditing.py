"""Token service events -> the audit trail, without a database write on the request path.

``/token`` must answer in well under a millisecond of our own time; one hash-chained append per
request would serialise every worker on the chain head.  Events are queued and appended in
batches (``AuditStore.append_many``) by a daemon thread every ``flush_seconds``; at exit the
queue is flushed.

With ``journal_dir`` an answered exchange's event also survives a crash of the process (SIGKILL,
OOM): each event is appended to a per-process journal file before ``/token`` answers (one
``write``, no fsync: the page cache outlives the process), and the file is deleted once its
events are in the store.  A live process holds an ``flock`` on its file; files nobody holds are
left by dead processes and are replayed at start-up (events already stored are skipped by
``event_id``).  A power cut can still lose the last ones; the syslog copy does not cover those.

What is replayed becomes an audit record, so the journal is the bridge's alone: the directory is
made 0700 (also when it existed with looser modes; one that is a symlink or owned by another
user is refused), segments are created 0600, and a file that is not a regular 0600 file of this
user (a symlink, one somebody else wrote or could have written) is never replayed nor deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.core.audit_events import Actor, AuditEvent, ParticipantObject, token, user
from bridge.core.envelope import EnvelopeError, KeyProvider
from bridge.core.sealed import TOKEN_JOURNAL, open_line, seal_line

log = logging.getLogger(__name__)

_FAILURES = {AuditEventType.ACCESS_DENIED: Outcome.MINOR_FAILURE, AuditEventType.MFA_FAILURE: Outcome.MINOR_FAILURE}


def to_event(kind: AuditEventType, details: Mapping[str, Any], issuer: str) -> AuditEvent:
    """One token-service event as an audit event (actor = the user when known, else the client)."""
    sub, username, jti = details.get("subject"), details.get("username"), details.get("jti")
    objects: list[ParticipantObject] = []
    if sub:
        objects.append(user(str(sub), username))
    if jti:
        objects.append(token(str(jti)))
    actor = Actor(
        user_id=f"{sub}@{issuer}" if sub else None, username=username, client_id=details.get("client_id") or None,
        network_address=details.get("network_address") or None,  # added by bridge/web/client.py in a request
    )
    extra = {k: v for k, v in details.items()
             if k not in ("subject", "username", "jti", "client_id", "network_address")}
    return AuditEvent(type=kind, outcome=_FAILURES.get(kind), actor=actor, objects=tuple(objects), details=extra)


class Journal:
    """The crash journal of one process (see the module docstring): segments ``<pid>-<ns>.jsonl``."""

    def __init__(self, directory: Path, keys: KeyProvider | None = None):
        #: seals each line (bridge/core/sealed.py): the events name users and their sessions
        self.keys = keys
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise RuntimeError(f"audit journal {directory}: not a directory of this user "
                               "(a symlink or another owner); refusing to replay from it")
        if stat.S_IMODE(st.st_mode) != 0o700:
            log.warning("audit journal %s: mode %o tightened to 0700", directory, stat.S_IMODE(st.st_mode))
            os.chmod(directory, 0o700)
        self.dir = directory
        self._file, self._path = self._open()
        #: segments rotated out whose events may not be in the store yet (kept open: locked)
        self.pending: list[tuple[IO[str], Path]] = []
        #: orphan segments being replayed (locked by us meanwhile)
        self._replaying: list[tuple[IO[str], Path]] = []

    def _open(self) -> tuple[IO[str], Path]:
        """A new segment, locked before it carries a name the replay looks at: created as
        ``*.jsonl.new`` (not matched by ``*.jsonl``), locked, then renamed.  Created under its final
        name, another process starting up could lock it in between, take it for a dead process's
        segment and delete it (and this process's lock would then fail)."""
        path = self.dir / f"{os.getpid()}-{time.time_ns()}.jsonl"
        fresh = path.with_name(path.name + ".new")
        fh = open(fresh, "a", encoding="utf-8",  # noqa: SIM115
                  opener=lambda p, flags: os.open(p, flags | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "alive": nobody replays it
        os.rename(fresh, path)
        return fh, path

    def write(self, event: AuditEvent) -> None:
        line = json.dumps(event.to_dict(), separators=(",", ":"))
        if self.keys is not None:
            line = seal_line(self.keys, self._path.name, TOKEN_JOURNAL, line.encode()).decode("ascii")
        self._file.write(line + "\n")
        self._file.flush()

    def rotate(self) -> None:
        """Start a new segment; the current one waits in ``pending`` until :meth:`committed`."""
        self.pending.append((self._file, self._path))
        self._file, self._path = self._open()

    def committed(self) -> None:
        """Every event of the pending segments is in the store: delete them."""
        for fh, path in self.pending:
            with contextlib.suppress(OSError):
                os.unlink(path)
            fh.close()
        self.pending = []

    def orphans(self) -> list[tuple[Path, list[AuditEvent]]]:
        """Segments of dead processes (no lock on them) and their events; each is locked now, so
        one replayer takes it; :meth:`forget` deletes it after the replay."""
        out = []
        for path in sorted(self.dir.glob("*.jsonl")):
            try:  # a symlink is not one of ours; kept open (locked) until forget
                fh = open(path, encoding="utf-8",  # noqa: SIM115
                          opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW))
            except OSError:
                log.warning("audit journal: %s is gone or a symlink; not replayed", path)
                continue
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
                log.error("audit journal: %s was not written by the bridge (owner %d, mode %o); not replayed",
                          path, st.st_uid, stat.S_IMODE(st.st_mode))
                fh.close()
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue  # a live process holds it (ours included)
            events = []
            unreadable = 0
            for line in fh.read().splitlines():
                try:
                    raw = line.encode()
                    if self.keys is not None:
                        raw = open_line(self.keys, path.name, TOKEN_JOURNAL, raw, plaintext_ok=True)
                    events.append(AuditEvent.from_dict(json.loads(raw)))
                except (ValueError, KeyError, TypeError, EnvelopeError):  # a torn last line
                    unreadable += 1
            if unreadable > 1:  # more than a torn last line: altered, or sealed under another KEK
                log.error("audit journal: %s has %d lines that do not open or parse; replaying the rest",
                          path, unreadable)
            self._replaying.append((fh, path))
            out.append((path, events))
        return out

    def forget(self, *, delete: bool = True) -> None:
        """Done with the orphans: delete them (replayed) or just unlock them (replay failed)."""
        for fh, path in self._replaying:
            if delete:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            fh.close()
        self._replaying = []


class BufferedAuditSink:
    """Callable sink ``(kind, details)`` for :class:`bridge.tokens.service.TokenService`."""

    def __init__(self, store: Any, issuer: str, flush_seconds: float = 0.25, max_batch: int = 500,
                 journal_dir: Path | None = None, journal_keys: KeyProvider | None = None):
        self.store = store
        self.issuer = issuer
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self._queue: queue.Queue[AuditEvent] = queue.Queue()
        self._lock = threading.Lock()  # journal line and queue entry go together
        self.journal = Journal(journal_dir, journal_keys) if journal_dir is not None else None
        #: set once the start-up replay of dead processes' journals is done (or failed)
        self.replayed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-flush", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def __call__(self, kind: AuditEventType, details: Mapping[str, Any]) -> None:
        event = to_event(kind, details, self.issuer)
        if self.journal is None:
            self._queue.put(event)
            return
        with self._lock:
            self.journal.write(event)
            self._queue.put(event)

    def replay(self) -> int:
        """Append the events that dead processes journaled but did not store; how many."""
        if self.journal is None:
            return 0
        from sqlalchemy import select

        from bridge.store.models import AuditEventRow

        orphans = self.journal.orphans()
        events = [e for _, evs in orphans for e in evs]
        if events:
            with self.store.engine.connect() as conn:
                known = set(conn.execute(select(AuditEventRow.event_id).where(
                    AuditEventRow.event_id.in_([e.event_id for e in events]))).scalars())
            fresh = [e for e in events if e.event_id not in known]
            self.store.append_many(fresh)
            log.warning("audit: replayed %d token events journaled by stopped processes (%d were stored)",
                        len(fresh), len(events) - len(fresh))
        self.journal.forget()
        return len(events)

    def flush(self) -> int:
        batch: list[AuditEvent] = []
        with self._lock:
            if self.journal is not None and not self._queue.empty():
                self.journal.rotate()  # everything queued so far is in the rotated segments
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        if batch:
            try:
                self.store.append_many(batch)
            except Exception:  # keep serving; the events go back for the next attempt
                log.exception("audit: appending %d token events failed; will retry", len(batch))
                for ev in batch:
                    self._queue.put(ev)
                return 0
        if self.journal is not None and self._queue.empty():
            with self._lock:
                if self._queue.empty():
                    self.journal.committed()
        return len(batch)

    def _run(self) -> None:
        stop = threading.Event()
        try:
            self.replay()
        except Exception:  # the store is down: the orphans stay for the next start
            log.exception("audit: replaying journaled token events failed")
            if self.journal is not None:
                self.journal.forget(delete=False)
        self.replayed.set()
        while not stop.wait(self.flush_seconds):
            while self.flush() >= self.max_batch:
                pass
