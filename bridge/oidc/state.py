"""Logout state every worker must share: ended Keycloak sessions (``sid``) and the ``jti`` values of
accepted back-channel logout tokens (replay protection).

Why in the database: the web server runs several worker processes (and a site may run several
replicas).  Keycloak's logout token reaches one of them; the browser's next ``/login``, the
viewer's next exchange or a replayed logout token may reach another.  State kept in one process's
memory would let those through.  Both tables are small (one row per logout) and expire: rows are
deleted once nothing they guard could still be accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from bridge.store.db import connection, write_session
from bridge.store.models import EndedSession, LogoutTokenSeen

#: how long an ended ``sid`` is remembered: longer than a Keycloak SSO session may live (its default
#: maximum is 10 h) and than the bridge's absolute session timeout allows
DEFAULT_ENDED_SESSION_SECONDS = 24 * 3600


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class SqlEndedSessions:
    """Ended Keycloak sessions, by ``sid``, in the ``ended_sessions`` table."""

    def __init__(self, engine: Engine, ttl_seconds: float = DEFAULT_ENDED_SESSION_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.engine = engine
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    def end(self, sid: str) -> None:
        """Record that ``sid`` is over (idempotent); expired rows are cleaned up on the way."""
        now = self.clock()
        with write_session(self.engine) as s:
            s.execute(delete(EndedSession).where(EndedSession.exp < _ts(now)))
            row = s.get(EndedSession, sid)
            if row is None:
                s.add(EndedSession(sid=sid, ended_at=_ts(now), exp=_ts(now + self.ttl_seconds)))
            else:
                row.exp = max(row.exp, _ts(now + self.ttl_seconds))

    def ended(self, sid: str | None) -> bool:
        """True when ``sid`` was ended by a logout (read fresh: another worker may have just ended it)."""
        if not sid:
            return False
        with connection(self.engine) as conn:  # Core, prebuilt statement: on every exchange
            exp = conn.execute(_ENDED, {"sid": sid}).scalar()
        return exp is not None and exp > _ts(self.clock())


_ENDED = select(EndedSession.exp).where(EndedSession.sid == bindparam("sid"))


class SqlReplayCache:
    """``jti`` values of accepted logout tokens in ``logout_token_jtis``; the primary key makes
    "first time?" one atomic insert across workers, processes and replicas."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock

    def first_time(self, jti: str, keep_until: float) -> bool:
        now = self.clock()
        try:
            with write_session(self.engine) as s:
                s.execute(delete(LogoutTokenSeen).where(LogoutTokenSeen.exp < _ts(now)))
                if s.get(LogoutTokenSeen, jti) is not None:
                    return False
                s.add(LogoutTokenSeen(jti=jti, exp=_ts(max(keep_until, now) + 1)))
        except IntegrityError:  # another worker inserted the same jti between our read and commit
            return False
        return True
