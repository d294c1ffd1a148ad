"""Engine factory, migrations and transactions for the bridge's database.

SQLite (a file, the default) or PostgreSQL (by URL).  On SQLite every connection gets
WAL (readers never block the writer), foreign keys (off by default in SQLite!), a busy timeout
(a second process waits instead of failing with "database is locked") and synchronous=NORMAL
(in WAL mode this survives an application crash; a power cut may lose the last commits, which the
syslog copy of the audit trail covers; see docs/audit.md).

Writers that must serialise (the audit chain head) use :func:`write_transaction`: on SQLite it
starts the transaction with ``BEGIN IMMEDIATE`` so the write lock is taken up front and two
writers never both read the same chain head; on PostgreSQL the caller locks the row with
``SELECT ... FOR UPDATE``.  Ordinary transactions stay ``BEGIN`` (deferred) so that long reads
such as ``audit verify`` never hold the write lock.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from bridge.errors import InputError

DEFAULT_URL = "sqlite:///var/pacs-bridge.db"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 10_000
_BEGIN_OPTION = "pacs_bridge_sqlite_begin"


class StoreError(InputError):
    """A database URL or migration problem, worded for the operator."""


#: the HKDF purpose of the SQLCipher database key (derived from the bridge's KEK)
SQLCIPHER_PURPOSE = "store-sqlcipher"
#: engine -> its SQLCipher key, for code that must open another connection to the same file
#: (the parallel audit verify workers)
_CIPHER_KEYS: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()


def _give_key(dbapi_conn: Any, key: bytes) -> bool:
    """Give SQLCipher ``key`` (before anything else touches the file: it reads page 1 lazily) and
    read once, so a wrong key fails here and not in the middle of a transaction."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        cur.execute("SELECT count(*) FROM sqlite_master")
        return True
    except Exception:
        return False
    finally:
        cur.close()


def _key_that_opens(path: str | None, keys: list[bytes]) -> bytes | None:
    """The first of ``keys`` that opens the SQLite file (a missing file: the first, it is created
    under it); None when none does."""
    if not path or not Path(path).exists() or Path(path).stat().st_size == 0:
        return keys[0]
    import sqlcipher3

    for key in keys:
        conn = sqlcipher3.dbapi2.connect(path)
        try:
            if _give_key(conn, key):
                return key
        finally:
            conn.close()
    return None


def _sqlite_setup(eng: Engine, cipher_key: bytes | None = None) -> None:
    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy's "begin" event below decide how transactions start
        dbapi_conn.isolation_level = None
        if cipher_key is not None and not _give_key(dbapi_conn, cipher_key):
            raise StoreError(f"store.url: {eng.url.database}: the key derived from "
                             "tokens.key_encryption_key does not open this database (another KEK, "
                             "or a file that is not SQLCipher-encrypted: see `pacs-bridge db encrypt`)")
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(eng, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def engine(url: str | None = None, *, cipher_key: bytes | None = None, previous_cipher_key: bytes | None = None,
           **kwargs: Any) -> Engine:
    """An engine for ``url`` (default: the SQLite file ``var/pacs-bridge.db``).

    The parent directory of a SQLite file is created, so a fresh install just works.
    ``cipher_key``: open the SQLite file with SQLCipher (AES-256, whole file) under this key;
    see :func:`engine_for`, which derives it from the bridge's KEK when ``store.sqlcipher`` is set.
    """
    url = url or DEFAULT_URL
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StoreError(f"store.url: not a database URL ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        if cipher_key is not None:
            import sqlcipher3

            kwargs["module"] = sqlcipher3.dbapi2
            if previous_cipher_key is not None:  # a KEK rotation: whichever opens it, until rekeyed
                cipher_key = _key_that_opens(db, [cipher_key, previous_cipher_key]) or cipher_key
        eng = create_engine(parsed, **kwargs)
        _sqlite_setup(eng, cipher_key)
        if cipher_key is not None:
            _CIPHER_KEYS[eng] = cipher_key
        return eng
    if cipher_key is not None:
        raise StoreError("store.sqlcipher: only a SQLite store is encrypted by the bridge; PostgreSQL's "
                         "data directory belongs on an encrypted volume (docs/encryption.md)")
    if backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **kwargs)
    raise StoreError(f"store.url: unsupported database {backend!r} (use sqlite:/// or postgresql://)")


def cipher_key(settings: Any) -> bytes | None:
    """The SQLCipher key of the configured store (``store.sqlcipher``), derived from the KEK."""
    return cipher_keys(settings)[0]


def cipher_keys(settings: Any) -> tuple[bytes | None, bytes | None]:
    """The store's SQLCipher key and, during a KEK rotation, the previous KEK's one."""
    if not settings.store.sqlcipher:
        return None, None
    from bridge.kek import KeyEncryptor

    enc = KeyEncryptor.from_settings(settings)
    previous = enc.previous.derived_key(SQLCIPHER_PURPOSE) if enc.previous is not None else None
    return enc.derived_key(SQLCIPHER_PURPOSE), previous


def cipher_key_of(eng: Engine) -> bytes | None:
    """The SQLCipher key ``eng`` was built with (None: not encrypted by the bridge)."""
    return _CIPHER_KEYS.get(eng)


def engine_for(settings: Any, **kwargs: Any) -> Engine:
    """The engine of the configured store: ``store.url``, encrypted when ``store.sqlcipher`` is set.
    Every part of the bridge builds its engine here (never from ``store.url`` alone)."""
    current, previous = cipher_keys(settings)
    return engine(settings.store.url, cipher_key=current, previous_cipher_key=previous, **kwargs)


@cache
def _sessionmaker(eng: Engine) -> sessionmaker[Session]:
    return sessionmaker(eng, expire_on_commit=False)


@contextmanager
def session(eng: Engine) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on any exception."""
    with _sessionmaker(eng).begin() as s:
        yield s


@contextmanager
def write_session(eng: Engine) -> Iterator[Session]:
    """A unit of work that reads and then writes (check-then-insert, raise-a-watermark).

    On SQLite it takes the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction whose
    WAL snapshot went stale because another connection committed after its first read cannot
    upgrade to a writer, and fails at once with "database is locked" (the busy timeout does not
    apply).  With the lock taken first, it waits its turn instead."""
    with eng.connect() as conn:
        if eng.dialect.name == "sqlite":
            conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        with Session(bind=conn, expire_on_commit=False) as s, s.begin():
            yield s


@contextmanager
def write_transaction(eng: Engine) -> Iterator[Connection]:
    """A transaction that intends to write a serialised resource (see the module docstring)."""
    with eng.connect() as conn:
        if eng.dialect.name == "sqlite":
            conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            yield conn


def alembic_config(url: str) -> Any:
    """The Alembic configuration for the migrations shipped inside the package (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str | None = None, revision: str = "head", *, cipher_key: bytes | None = None,
            previous_cipher_key: bytes | None = None) -> str:
    """Bring the database at ``url`` to ``revision``; return the revision now current."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    url = url or DEFAULT_URL
    eng = engine(url, cipher_key=cipher_key, previous_cipher_key=previous_cipher_key)
    try:
        with eng.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        with eng.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or "base"
    finally:
        eng.dispose()


def migrate_store(settings: Any, revision: str = "head") -> str:
    """:func:`migrate` for the configured store (encrypted when ``store.sqlcipher`` is set)."""
    current, previous = cipher_keys(settings)
    return migrate(settings.store.url, revision, cipher_key=current, previous_cipher_key=previous)


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------- one connection per thread

_pinned = threading.local()


@contextmanager
def one_connection(engine: Engine) -> Iterator[None]:
    """Let this thread's issue-time reads (assignments, watermarks, ended sessions) share one
    connection: one pool checkout and one transaction instead of three -- half the cost of the
    uncached reads on ``/token`` -- and one consistent view of the three tables."""
    if getattr(_pinned, "conn", None) is not None:
        yield
        return
    with engine.connect() as conn:
        _pinned.conn, _pinned.engine = conn, engine
        try:
            yield
        finally:
            _pinned.conn = _pinned.engine = None


@contextmanager
def connection(engine: Engine) -> Iterator[Connection]:
    """The connection pinned by :func:`one_connection` for ``engine``, else a fresh one."""
    conn = getattr(_pinned, "conn", None)
    if conn is not None and _pinned.engine is engine:
        yield conn
    else:
        with engine.connect() as fresh:
            yield fresh
