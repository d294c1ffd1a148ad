"""PostgreSQL 15 (Debian's binaries) as the bridge's production-like database.

One cluster in ``<state>/postgres/data``: TCP on 127.0.0.1 at a free port with TLS only (a
certificate from the dev CA), SCRAM passwords, one role and database ``bridge``.  The Unix
socket lives in ``<state>/postgres/run`` (not /var/run/postgresql) and only the ``postgres``
superuser may use it, by peer authentication, for provisioning.

PostgreSQL refuses to run as root.  When the stack runs as root (CI, this dev box) the server
runs as Debian's ``postgres`` system user via ``setpriv``, which *execs* (unlike ``runuser``,
which forks and waits): the recorded pid is the postmaster itself and its process group holds
every backend, so `down` stops them all.  As an ordinary user the server runs as that user.

No secret goes into stack.json: it holds the URL without the password (`url`), a template
(`url_template`) and the name of the password secret; `database_url()` assembles the real URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from pacs_devstack import process, tls
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"  # Debian's postgresql-common creates it
PASSWORD_SECRET = "postgres-bridge"
DB_USER = "bridge"
DB_NAME = "bridge"


WORK_ROOT = Path("/var/tmp")  # noqa: S108 - each folder's ownership is checked before use
WORK_PREFIX = "pacs-bridge-pg-"
OWNER_FILE = "state-dir"  # which state dir a root-run cluster folder belongs to


def _remove_predecessors(state: Path) -> None:
    """Remove the root-run cluster folders of earlier state dirs at `state`'s path (a clean clone
    where another once was): nothing refers to them any more.  A folder whose server still runs is
    left alone, and so is anything not owned by root or without an owner record."""
    for folder in WORK_ROOT.glob(f"{WORK_PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != 0:
                continue
            if (folder / OWNER_FILE).read_text() != str(state):
                continue
        except OSError:
            continue
        if _server_alive(folder / "data" / "postmaster.pid"):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _server_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _as_server_user(argv: list[str]) -> list[str]:
    """Run `argv` as the server user when we are root; exec, no fork (see module docstring)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--reset-env",
            *argv]


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _url(port: int, ca_file: str, password: str | None) -> URL:
    return URL.create(
        "postgresql+psycopg2", username=DB_USER, password=password, host="127.0.0.1", port=port,
        database=DB_NAME, query={"sslmode": "verify-full", "sslrootcert": ca_file},
    )


def database_url(stack_info: dict[str, Any], ctx: StackContext | None = None) -> str:
    """The SQLAlchemy URL with the password, from the stack's `postgres` entry (or the entry itself).

    The password is URL-quoted here, so any secret works (filling `url_template` by hand would not).
    """
    info = stack_info.get("postgres", stack_info)
    try:
        port, ca_file, secret_name = int(info["port"]), str(info["ca_file"]), str(info["password_secret"])
    except (KeyError, TypeError, ValueError):
        raise DevstackError("stack.json: the postgres entry lacks port/ca_file/password_secret; "
                            "is the dev stack's postgres up?") from None
    ctx = ctx or StackContext(ca_file=Path(ca_file))
    return _url(port, ca_file, ctx.secret(secret_name)).render_as_string(hide_password=False)


@contextlib.contextmanager
def private_schema(stack_info: dict[str, Any], prefix: str = "t") -> Iterator[str]:
    """A migrated private schema in the stack's database (tests share that database); yields its
    URL (``search_path`` set to the schema) and drops the schema afterwards."""
    from sqlalchemy import text

    from bridge.store import db

    url = database_url(stack_info)
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = db.engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    db.migrate(scoped)
    try:
        yield scoped
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


class PostgresService(Service):
    name = "postgres"
    apt_packages = ("postgresql-15",)

    @property
    def work(self) -> Path:
        """Where the server's files live.  As root, the server runs as the `postgres` user, which
        often cannot traverse the state dir's parents (a 0700 mktemp dir in CI, pytest's temp root),
        so its files go to a private folder under /var/tmp.

        The folder belongs to this state directory *instance*, not to its path: a clean clone at the
        same path (a CI workspace reused run after run) gets a fresh state dir with fresh secrets, and
        a cluster named after the path alone would hand it the previous run's database, whose rows
        were encrypted under the previous run's key-encryption key.  So the name mixes in a random
        id kept in the state dir, and the clusters of earlier instances at the same path are removed."""
        if os.geteuid() != 0:
            return self.dir
        ident_file = self.dir / "instance"
        try:
            ident = ident_file.read_text().strip()
        except FileNotFoundError:
            ident = ""
        if not ident:
            ident = uuid.uuid4().hex
            ident_file.write_text(ident)
        digest = hashlib.sha256(f"{self.dir}\0{ident}".encode()).hexdigest()[:16]
        path = WORK_ROOT / f"{WORK_PREFIX}{digest}"
        if not path.exists():
            _remove_predecessors(self.dir)
        path.mkdir(mode=0o755, exist_ok=True)
        if path.is_symlink() or path.stat().st_uid != 0:
            raise DevstackError(f"postgres: {path} exists but is not a directory owned by root; remove it")
        owner = path / OWNER_FILE
        if not owner.exists():
            owner.write_text(str(self.dir))
        (self.dir / "workdir").write_text(str(path))
        return path

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    @property
    def socket_dir(self) -> Path:
        return self.work / "run"

    @property
    def tls_dir(self) -> Path:
        return self.work / "tls"

    def _port(self) -> int:
        try:
            return int((self.work / "port").read_text())
        except (OSError, ValueError) as exc:
            raise DevstackError(f"postgres: cannot read the port from {self.work / 'port'}: {exc}") from None

    def prepare(self, ctx: StackContext) -> None:
        if not (PG_BIN / "postgres").exists():
            raise DevstackError(f"postgres: {PG_BIN / 'postgres'} is missing (apt package postgresql-15)")
        if os.geteuid() == 0:
            # the server user must be able to reach its directories through the state dir
            process.run(_as_server_user(["test", "-x", str(self.work)]),
                        what=f"postgres: {self.work} is not reachable by user {SERVER_USER} "
                             "(check the modes of its parent directories)")
        for d in (self.socket_dir, self.tls_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            _chown(d)
        # the server reads its key as itself, and insists on 0600 (or root-owned 0640)
        pair = tls.issue("postgres")
        for src, dst in ((pair.cert, "server.crt"), (pair.key, "server.key")):
            shutil.copyfile(src, self.tls_dir / dst)
            (self.tls_dir / dst).chmod(0o600)
            _chown(self.tls_dir / dst)
        (self.work / "port").write_text(str(free_port()))
        hba = self.work / "pg_hba.conf"
        hba.write_text(
            "# written by devstack/pacs_devstack/postgres.py; anything not listed is rejected\n"
            f"local   all     {SERVER_USER}  peer\n"
            f"hostssl {DB_NAME}  {DB_USER}    127.0.0.1/32  scram-sha-256\n"
            f"hostssl {DB_NAME}  {DB_USER}    ::1/128       scram-sha-256\n"
        )
        hba.chmod(0o644)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            _chown(self.data_dir)
            process.run(_as_server_user([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", SERVER_USER,
                                         "-E", "UTF8", "--locale=C", "--auth-local=peer",
                                         "--auth-host=scram-sha-256"]),
                        what="postgres: initdb", timeout=120)

    def start(self, ctx: StackContext) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "hba_file": str(self.work / "pg_hba.conf"),
            "ssl": "on",
            "ssl_cert_file": str(self.tls_dir / "server.crt"),
            "ssl_key_file": str(self.tls_dir / "server.key"),
            "ssl_min_protocol_version": "TLSv1.2",
            "password_encryption": "scram-sha-256",
        }
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data_dir), "-p", str(self._port())]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        process.start(self.name, _as_server_user(argv), cwd=self.work)

    def _psql(self, sql: str) -> str:
        return process.run(
            _as_server_user([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                             "-h", str(self.socket_dir), "-p", str(self._port()), "-U", SERVER_USER,
                             "-d", "postgres"]),
            what="postgres: provisioning (psql)", input_text=sql, timeout=60,
        )

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        port = self._port()
        isready = [str(PG_BIN / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(port)]

        def ready() -> bool:
            process.run(isready, what="pg_isready", timeout=5)
            return True

        process.wait_until(ready, what="postgres", timeout=60, rec=process.load(self.name), interval=0.2)
        password = ctx.secret(PASSWORD_SECRET).replace("'", "''")
        # the password travels on psql's stdin, never on a command line
        # fixed identifiers; the password is quoted as an SQL literal
        self._psql(
            f"SELECT 'CREATE ROLE {DB_USER}' WHERE NOT EXISTS "  # noqa: S608
            f"(SELECT FROM pg_roles WHERE rolname = '{DB_USER}')\\gexec\n"
            f"ALTER ROLE {DB_USER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}';\n"
            f"SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_USER}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DB_NAME}')\\gexec\n"
        )
        ca_file = str(ctx.ca_file)
        return {
            "url": _url(port, ca_file, None).render_as_string(),
            # str.format template: the braces must survive URL quoting
            "url_template": _url(port, ca_file, "PASSWORD").render_as_string(hide_password=False)
            .replace(":PASSWORD@", ":{password}@", 1),
            "password_secret": PASSWORD_SECRET,
            "host": "127.0.0.1",
            "port": port,
            "ca_file": ca_file,
        }

    def stop(self) -> bool:
        """Fast shutdown (SIGINT: abort sessions, checkpoint); SIGTERM would wait for clients.  The
        postmaster stops its backends itself (they run in process groups of their own)."""
        return process.stop(self.name, timeout=10, first_signal=signal.SIGINT)


SERVICE = PostgresService()
