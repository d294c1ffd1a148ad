"""Redis (Debian ``redis-server``) for the bridge's shared rate-limit counters.

Every web server worker (and every bridge instance of a site) counts against the same limits only
if the counters live outside the workers; the bridge's ``web.rate_limit_storage_url`` points here.

- Transport: TLS only (Debian's redis-server 7 is built with TLS): ``port 0`` disables plain
  TCP, ``tls-port`` on 127.0.0.1 presents a certificate from the dev CA, clients verify it.
  Clients are not asked for a certificate (``tls-auth-clients no``); they authenticate with
  the password below.
- Authentication: ``requirepass`` with a generated secret (``redis-password`` in the stack's
  secrets); the bridge reads it from a 0600 file (``rate_limit_storage_password_file``).
- Nothing persisted (``save ""``, no AOF): rate-limit counters live for seconds to minutes, and
  a restart forgetting them only gives clients a fresh budget.
- Isolation: no Unix socket, its own working directory, protected mode on, the host's
  ``/etc/redis`` untouched (the package's own service is kept from starting by install.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacs_devstack import process, tls
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port

BINARY = Path("/usr/bin/redis-server")
PASSWORD_SECRET = "redis-password"


class RedisService(Service):
    name = "redis"
    apt_packages = ("redis-server",)

    @property
    def config_file(self) -> Path:
        return self.dir / "redis.conf"

    def _port(self) -> int:
        try:
            return int((self.dir / "port").read_text())
        except (OSError, ValueError) as exc:
            raise DevstackError(f"redis: cannot read the port from {self.dir / 'port'}: {exc}") from None

    def prepare(self, ctx: StackContext) -> None:
        if not BINARY.exists():
            raise DevstackError(f"redis: {BINARY} is missing (apt package redis-server)")
        port = free_port()
        (self.dir / "port").write_text(str(port))
        pair = tls.issue("redis")
        password = ctx.secret(PASSWORD_SECRET)
        data = self.dir / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        self.config_file.write_text(f"""\
# written by devstack/pacs_devstack/redis.py
bind 127.0.0.1
protected-mode yes
port 0
tls-port {port}
tls-cert-file {pair.cert}
tls-key-file {pair.key}
tls-ca-cert-file {pair.ca}
tls-auth-clients no
tls-protocols "TLSv1.2 TLSv1.3"
requirepass "{password}"
daemonize no
supervised no
pidfile ""
logfile ""
unixsocket ""
dir {data}
save ""
appendonly no
databases 4
""", encoding="utf-8")
        self.config_file.chmod(0o600)  # holds the password

    def start(self, ctx: StackContext) -> None:
        process.start(self.name, [str(BINARY), str(self.config_file)], cwd=self.dir)

    def client(self, ctx: StackContext) -> Any:
        """A redis-py client for this server (TLS, verified against the dev CA)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self._port(), password=ctx.secret(PASSWORD_SECRET), ssl=True,
                           ssl_ca_certs=str(ctx.ca_file), ssl_cert_reqs="required", socket_timeout=3)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        port = self._port()

        def ready() -> bool:
            conn = self.client(ctx)
            try:
                return bool(conn.ping())
            finally:
                conn.close()

        process.wait_until(ready, what="redis", timeout=30, rec=process.load(self.name), interval=0.1)
        return {"host": "127.0.0.1", "port": port, "url": f"rediss://127.0.0.1:{port}/0",
                "password_secret": PASSWORD_SECRET, "ca_file": str(ctx.ca_file)}


SERVICE = RedisService()
