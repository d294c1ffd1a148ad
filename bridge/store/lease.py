"""A lease in the database: one holder at a time across replicas, with expiry so a crashed
holder does not block the others forever.

Why a lease and not ``pg_advisory_lock``: it works the same on SQLite and PostgreSQL, survives
connection pooling, and its owner and expiry are visible to an operator (``sync_lock`` table).
Acquisition is one conditional UPDATE (atomic on both backends); the row is created on first use.

A holder whose work may outlast the lease keeps it with :class:`Keeper` (a thread that renews it
every third of its lifetime): the expiry then only protects against a holder that *died*, and a
slow run is never joined by a second one.  Times are the replicas' clocks (keep them in NTP sync;
the lifetimes are minutes, skew is seconds).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bridge.store.models import SyncLock, utcnow

log = logging.getLogger(__name__)


def acquire(eng: Engine, name: str, owner: str, ttl_seconds: float) -> bool:
    """Take (or renew, if ``owner`` already holds it) the lease ``name``; False if someone else holds it."""
    now = utcnow()
    expires = now + dt.timedelta(seconds=ttl_seconds)
    with eng.begin() as conn:
        res = conn.execute(
            update(SyncLock)
            .where(SyncLock.name == name)
            .where(or_(SyncLock.owner.is_(None), SyncLock.owner == owner, SyncLock.expires_at < now))
            .values(owner=owner, acquired_at=now, expires_at=expires)
        )
        if res.rowcount == 1:
            return True
        exists = conn.execute(select(SyncLock.name).where(SyncLock.name == name)).first()
        if exists:
            return False
    try:
        with eng.begin() as conn:
            conn.execute(insert(SyncLock).values(name=name, owner=owner, acquired_at=now, expires_at=expires))
        return True
    except IntegrityError:  # another replica created it first
        return acquire(eng, name, owner, ttl_seconds)


def renew(eng: Engine, name: str, owner: str, ttl_seconds: float) -> bool:
    """Push the expiry of a lease ``owner`` holds; False if it is not (any longer) theirs.

    Never takes a free or expired-and-taken lease over, and keeps ``acquired_at``, so an operator
    sees since when the holder has been at it."""
    expires = utcnow() + dt.timedelta(seconds=ttl_seconds)
    with eng.begin() as conn:
        res = conn.execute(
            update(SyncLock).where(SyncLock.name == name, SyncLock.owner == owner).values(expires_at=expires)
        )
        return res.rowcount == 1


class Keeper:
    """Renews a held lease in the background until :meth:`stop`; ``lost`` says if it was taken
    over meanwhile (the holder stalled longer than the lease, or the database was unreachable
    for that long)."""

    def __init__(self, eng: Engine, name: str, owner: str, ttl_seconds: float) -> None:
        self.eng, self.name, self.owner, self.ttl = eng, name, owner, ttl_seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> Keeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(max(self.ttl / 3, 0.05)):
            try:
                if not renew(self.eng, self.name, self.owner, self.ttl):
                    self.lost = True
                    log.error("lease %s: lost by %s (taken over after expiry)", self.name, self.owner)
                    return
            except Exception:  # the database is down: retry until the lease would have expired
                log.warning("lease %s: renewal failed; retrying", self.name, exc_info=True)


def release(eng: Engine, name: str, owner: str) -> bool:
    """Give the lease up; False if ``owner`` did not hold it (it expired and was taken over)."""
    with eng.begin() as conn:
        res = conn.execute(
            update(SyncLock)
            .where(SyncLock.name == name, SyncLock.owner == owner)
            .values(owner=None, expires_at=None)
        )
        return res.rowcount == 1


def holder(eng: Engine, name: str) -> tuple[str, dt.datetime] | None:
    """Who holds ``name`` and until when, or None if free or expired."""
    with eng.connect() as conn:
        row = conn.execute(select(SyncLock.owner, SyncLock.expires_at).where(SyncLock.name == name)).first()
    if row is None or row.owner is None or row.expires_at is None or row.expires_at < utcnow():
        return None
    return row.owner, row.expires_at
