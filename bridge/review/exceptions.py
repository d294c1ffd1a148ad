"""Revocations decided in an access review, as the sync applies them on every run.

A reviewer's *revoke* cannot wait for someone to edit the directory: the sync keeps the
assignment away although the policy still grants it, until the exception's date (if the reviewer
set one) or until a later review decides on the same assignment.  ``sync --plan`` shows each
exception with its reason (docs/sync.md, docs/governance.md)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, or_, select

from bridge.store.db import session
from bridge.store.models import ReviewException, utcnow


@dataclass(frozen=True)
class Exception_:
    subject_id: str
    username: str
    role: str
    reason: str
    until: dt.datetime | None

    def describe(self) -> str:
        until = f" until {self.until.date().isoformat()}" if self.until else " until the next review decides"
        return f"{self.reason}{until}"


def active(engine: Engine, now: dt.datetime | None = None) -> list[Exception_]:
    """The exceptions in force now (a store without the review tables has none)."""
    now = now or utcnow()
    t = ReviewException
    stmt = select(t).where(t.ended_at.is_(None), or_(t.until.is_(None), t.until > now)).order_by(t.id)
    with session(engine) as s:
        return [Exception_(r.subject_id.lower(), r.username, r.role, r.reason, r.until) for r in s.scalars(stmt)]


def by_key(engine: Engine, now: dt.datetime | None = None) -> dict[tuple[str, str], Exception_]:
    return {(e.subject_id, e.role): e for e in active(engine, now)}
