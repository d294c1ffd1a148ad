"""A lease in the database: one holder at a time across replicas, with expiry so a crashed
holder does not block the others forever.

Why a lease and not ``pg_advisory_lock``: it works the same on SQLite and PostgreSQL, survives
connection pooling, and its owner and expiry are visible to an operator (``sync_lock`` table).
Acquisition is one conditional UPDATE (atomic on both backends); the row is created on first use.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bridge.store.models import SyncLock, utcnow


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
