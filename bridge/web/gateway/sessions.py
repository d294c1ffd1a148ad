"""Gateway sessions: an opaque random id in the browser, everything else in the bridge's database.

Why this shape (docs/gateway.md):

* the id is 256 random bits (``secrets.token_urlsafe(32)``); only its SHA-256 is stored, so a copy
  of the table (a backup, a read-only SQL account) yields no cookie that works;
* the tokens a session holds (the PACS token, Keycloak's refresh token, the ID token for logout)
  are one AES-256-GCM ciphertext under a key derived from the bridge's key-encryption key for
  this purpose only (:meth:`bridge.tokens.keys.KeyEncryptor.derived`), with the id hash as
  associated data: a ciphertext copied onto another row does not decrypt;
* a row that does not decrypt (wrong key, tampering) is deleted and counts as no session.

Every request sees a logout handled by another worker or replica at once: on PostgreSQL each worker
keeps its sessions in a cache that LISTEN/NOTIFY empties the moment a session is ended or renewed
anywhere (:mod:`bridge.web.gateway.session_cache`: every change below notifies inside its own
transaction); when the listener is down, and always on SQLite, the row is read on every request.
What is kept per worker besides is the *opening* of a ciphertext: the decrypted tokens of the
ciphertext the row held last time; a row whose ciphertext changed (a renewal anywhere) is opened
again, a row that is gone is no session.

The read of a row goes through an engine in autocommit mode without the pool's pre-ping on
PostgreSQL: one round trip (a ``SELECT``) instead of four (ping, ``BEGIN``, ``SELECT``,
``ROLLBACK``); a connection found dead is retried once instead, which is what the ping would have
done, at the cost of a round trip only when a connection died.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, delete, func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from bridge.store.db import session as db_session
from bridge.store.models import GatewaySession
from bridge.tokens.keys import KeyEncryptor, SigningKeyError
from bridge.web.gateway.session_cache import CHANNEL, SessionCache

#: the HKDF purpose of the session key (a distinct key from the signing keys' KEK use)
KEY_PURPOSE = "pacs-bridge gateway sessions v1"
#: what a session id looks like (token_urlsafe(32) = 43 characters); anything else is no session
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
#: openings kept per worker (one per session: its last ciphertext); all dropped when full
OPENED_MAX = 4096


def hash_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _epoch(value: datetime) -> float:
    """A stored time as epoch seconds (a Core row from SQLite has no time zone: it is UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True)
class Tokens:
    """What a session keeps encrypted."""

    pacs_token: str
    refresh_token: str | None
    id_token: str | None


@dataclass(frozen=True)
class GatewayLogin:
    """A session as read from the store (tokens decrypted)."""

    id_hash: str
    subject_id: str
    kc_sub: str
    sid: str | None
    username: str | None
    created_at: float
    last_activity: float
    expires_at: float
    token_exp: float
    tokens: Tokens


_BY_ID = select(GatewaySession.__table__).where(GatewaySession.id_hash == bindparam("id_hash"))


def optimistic_reader(engine: Engine) -> Engine:
    """The engine of the per-request read: on PostgreSQL the same database in autocommit mode without
    pre-ping (see the module docstring; :meth:`SessionStore._read` retries a dead connection once),
    else ``engine``."""
    if engine.dialect.name != "postgresql":
        return engine
    return create_engine(engine.url, pool_pre_ping=False, isolation_level="AUTOCOMMIT")


def session_cache(engine: Engine, max_age: float) -> SessionCache[GatewayLogin] | None:
    """The per-worker session cache on PostgreSQL (its listener on a connection of its own, outside
    the pool); None on SQLite (no notifications) or when ``max_age`` is 0."""
    if engine.dialect.name != "postgresql" or max_age <= 0:
        return None
    listener = create_engine(engine.url, poolclass=NullPool)
    return SessionCache(listener.raw_connection, max_age=max_age)


class SessionStore:
    """The ``gateway_sessions`` table."""

    def __init__(self, engine: Engine, encryptor: KeyEncryptor, clock: Callable[[], float] = time.time,
                 cache_seconds: float = 5.0):
        self.engine = engine
        self.reader = optimistic_reader(engine)
        self.cache = session_cache(engine, cache_seconds)
        self._notifies = engine.dialect.name == "postgresql"
        self.encryptor = encryptor
        self.clock = clock
        #: id hash -> (ciphertext, its tokens): the last opening of each session's ciphertext
        self._opened: dict[str, tuple[bytes, Tokens]] = {}

    @classmethod
    def under_kek(cls, engine: Engine, kek: KeyEncryptor, clock: Callable[[], float] = time.time,
                  cache_seconds: float = 5.0) -> SessionStore:
        return cls(engine, kek.derived(KEY_PURPOSE), clock, cache_seconds)

    def _changed(self, s: Session, *id_hashes: str) -> None:
        """Tell every worker's cache (this one at once, the others when ``s`` commits)."""
        for id_hash in id_hashes:
            if self.cache is not None:
                self.cache.invalidate(id_hash)
            if self._notifies:
                s.execute(select(func.pg_notify(CHANNEL, id_hash)))

    def _seal(self, id_hash: str, tokens: Tokens) -> bytes:
        return self.encryptor.encrypt(json.dumps(asdict(tokens)).encode(), id_hash)

    def _open(self, row: Any, tokens_required: bool = True) -> GatewayLogin | None:
        """The row with its tokens decrypted; None if they do not decrypt (``tokens_required``),
        else empty tokens (a session being ended needs its identity, not necessarily its tokens)."""
        sealed = bytes(row.secrets)
        known = self._opened.get(row.id_hash)
        if known is not None and known[0] == sealed:
            tokens = known[1]
        else:
            try:
                data = json.loads(self.encryptor.decrypt(sealed, row.id_hash))
                tokens = Tokens(str(data["pacs_token"]), data.get("refresh_token"), data.get("id_token"))
            except (SigningKeyError, ValueError, KeyError, TypeError):
                self._opened.pop(row.id_hash, None)
                if tokens_required:
                    return None
                tokens = Tokens("", None, None)
            else:
                if len(self._opened) >= OPENED_MAX:
                    self._opened.clear()
                self._opened[row.id_hash] = (sealed, tokens)
        return GatewayLogin(row.id_hash, row.subject_id, row.kc_sub, row.sid, row.username,
                            _epoch(row.created_at), _epoch(row.last_activity),
                            _epoch(row.expires_at), _epoch(row.token_exp), tokens)

    def create(self, *, subject_id: str, kc_sub: str, sid: str | None, username: str | None, tokens: Tokens,
               token_exp: float, lifetime_seconds: float) -> str:
        """A new session; returns the raw id for the cookie (never stored)."""
        raw = secrets.token_urlsafe(32)
        id_hash = hash_id(raw)
        now = self.clock()
        with db_session(self.engine) as s:
            s.add(GatewaySession(
                id_hash=id_hash, subject_id=subject_id, kc_sub=kc_sub, sid=sid, username=username,
                created_at=_ts(now), last_activity=_ts(now), expires_at=_ts(now + lifetime_seconds),
                token_exp=_ts(token_exp), secrets=self._seal(id_hash, tokens),
            ))
        return raw

    def get(self, raw: str | None, fresh: bool = False) -> GatewayLogin | None:
        """The session of cookie value ``raw``, or None (malformed, unknown, undecryptable).
        ``fresh``: read the row even if this worker has it cached (before ending it as idle)."""
        if not raw or not ID_PATTERN.fullmatch(raw):
            return None
        id_hash = hash_id(raw)
        cache = self.cache
        generation = 0
        if cache is not None:
            cache.ensure_listening()
            if not fresh:
                hit = cache.lookup(id_hash)
                if hit is not None:
                    return hit
            generation = cache.generation()
        row = self._read(id_hash)
        if row is None:
            self._opened.pop(id_hash, None)
            return None
        found = self._open(row)  # type: ignore[arg-type]
        if found is None:
            self.end(id_hash)  # tampered or under another key: unusable, and never again tried
        elif cache is not None:
            cache.put(id_hash, found, generation)
        return found

    def _read(self, id_hash: str) -> Any:
        """The row (Core, prebuilt statement: this runs on every request), one retry on a dead
        connection (the reader has no pre-ping)."""
        for attempt in (1, 2):
            try:
                with self.reader.connect() as conn:
                    return conn.execute(_BY_ID, {"id_hash": id_hash}).first()
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        return None  # not reached

    def touch(self, login: GatewayLogin, when: float | None = None) -> GatewayLogin:
        """Record user activity (the idle clock restarts); returns the session as it now is.  No
        notification: another worker's older clock only makes it re-read the row before ending it."""
        when = self.clock() if when is None else when
        with db_session(self.engine) as s:
            s.execute(update(GatewaySession).where(GatewaySession.id_hash == login.id_hash)
                      .values(last_activity=_ts(when)))
        touched = replace(login, last_activity=when)
        if self.cache is not None:
            self.cache.replace(login.id_hash, touched)
        return touched

    def renew(self, id_hash: str, tokens: Tokens, token_exp: float) -> None:
        """Store renewed tokens (a row deleted meanwhile, e.g. by a logout, stays deleted)."""
        with db_session(self.engine) as s:
            s.execute(update(GatewaySession).where(GatewaySession.id_hash == id_hash)
                      .values(secrets=self._seal(id_hash, tokens), token_exp=_ts(token_exp)))
            self._changed(s, id_hash)

    def end(self, id_hash: str) -> None:
        self._opened.pop(id_hash, None)
        with db_session(self.engine) as s:
            s.execute(delete(GatewaySession).where(GatewaySession.id_hash == id_hash))
            self._changed(s, id_hash)

    def end_for(self, *, sid: str | None = None, subjects: tuple[str, ...] = ()) -> list[GatewayLogin]:
        """End every session of Keycloak session ``sid`` or of any of ``subjects`` (a directory id or
        Keycloak's user id); returns them (tokens decrypted where possible) so the caller can revoke."""
        conditions = []
        if sid:
            conditions.append(GatewaySession.sid == sid)
        for subject in subjects:
            conditions += [GatewaySession.subject_id == subject, GatewaySession.kc_sub == subject]
        if not conditions:
            return []
        ended: list[GatewayLogin] = []
        with db_session(self.engine) as s:
            rows = s.scalars(select(GatewaySession).where(or_(*conditions))).all()
            for row in rows:
                ended.append(self._open(row, tokens_required=False))  # type: ignore[arg-type]
                s.delete(row)
            self._changed(s, *(e.id_hash for e in ended))
        return ended

    def expired(self, idle_seconds: float, limit: int = 50) -> list[GatewayLogin]:
        """Sessions past their idle or absolute limit, removed from the table (the sweeper ends
        their Keycloak sessions too)."""
        now = self.clock()
        with db_session(self.engine) as s:
            ids = s.scalars(select(GatewaySession.id_hash).where(or_(
                GatewaySession.expires_at < _ts(now),
                GatewaySession.last_activity < _ts(now - idle_seconds))).limit(limit)).all()
        out: list[GatewayLogin] = []
        for id_hash in ids:
            with db_session(self.engine) as s:
                row = s.get(GatewaySession, id_hash)
                if row is None:
                    continue
                out.append(self._open(row, tokens_required=False))  # type: ignore[arg-type]
                s.delete(row)
                self._changed(s, id_hash)
        return out
