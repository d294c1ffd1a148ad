"""HAProxy (Debian's package) in front of the two bridge instances, as a site runs them.

TLS: HAProxy terminates the client's TLS with a CA-issued certificate and re-encrypts to each
instance, verifying the instance's certificate against the stack CA (``verify required``,
host name ``localhost``): nothing crosses even loopback in clear, and HAProxy sees the request,
so it can add ``X-Forwarded-For`` / ``X-Forwarded-Proto`` (the bridge decides how many proxy hops
it trusts: ``web.trusted_proxy_hops``).

Failover, tuned so that fewer than 1 % of requests fail in the second an instance dies:

- health check ``GET /readyz`` (the instance's database answers) every 500 ms, 250 ms while a
  state change is pending; 2 failures mark an instance down, 2 successes up again;
- a refused or failed connection (the instance is gone) is retried up to 3 times, each time on
  another instance (``option redispatch 1``): the request was never sent, so any method is safe;
- a request that *was* sent and got no answer (the instance died while working on it) is retried
  on another instance only if repeating it is harmless: GET/HEAD, ``POST /introspect`` (a read),
  ``POST /audit/events`` (the intake drops an ``event_id`` it already has), ``POST /revoke``
  (revoking twice is revoking once) and ``POST /token``: an exchange whose answer was lost minted
  at most a token that no one holds (the dead instance never delivered it; it expires within
  ``tokens.lifetime_seconds`` and its issue is in the audit trail), so repeating it costs an
  orphan token, while not repeating it fails a staff member's login during a failover;
  ``http-request disable-l7-retry`` for everything else (back-channel logout: its replay
  protection would refuse the repeat).

HAProxy closes its connection to the instance after each answer (``option http-server-close``;
the client side stays kept alive): reusing an idle connection to an instance that was just
killed fails the request sent on it, and for a token exchange that failure cannot be retried.

Header names with an underscore are refused (400): the bridge's web server, granian, maps
``X_Forwarded_For`` and ``X-Forwarded-For`` to one WSGI key, and a later spelling replaces the
line HAProxy adds, so a client could choose the address the bridge trusts.

The log leaves out query strings (``%HPO``): no login code or token ever lands in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bridge.http import pinned_session
from pacs_devstack import front, process, tls
from pacs_devstack.bridge import INSTANCES
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext

BINARY = Path("/usr/sbin/haproxy")
#: the dev stack's health-check timing (see the module docstring)
CHECK = "inter 500ms fastinter 250ms downinter 1s fall 2 rise 2"
#: re-encryption to the instances: their certificate must chain to the stack CA and name localhost
TLS_TO_SERVER = "ssl verify required sni str(localhost) verifyhost localhost"


def haproxy_config(*, port: int, cert_pem: Path, ca_file: Path, backends: dict[str, int],
                   admin_socket: Path | None = None) -> str:
    """The whole configuration; ``backends`` maps instance name -> its port on 127.0.0.1;
    ``admin_socket`` is the runtime API (``show stat``: which instance is up), 0600."""
    admin = f"\n    stats socket {admin_socket} mode 600 level admin" if admin_socket else ""
    servers = "\n".join(f"    server {name} 127.0.0.1:{p}" for name, p in backends.items())
    return f"""# written by devstack/pacs_devstack/haproxy.py
global
    maxconn 4096{admin}
    log stderr format short local0 info
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
    ssl-default-server-options ssl-min-ver TLSv1.2

defaults
    mode http
    log global
    log-format "%ci [%tr] %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %tsc %rc %HM %HPO"
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout check 1s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout

frontend bridge_tls
    bind 127.0.0.1:{port} ssl crt {cert_pem} alpn http/1.1
    # a header name with '_' is refused: the bridge's web server (granian) reads X_Forwarded_For as
    # X-Forwarded-For, and a later spelling replaces the line HAProxy adds (the client would choose
    # its address); no client of the bridge sends such names
    http-request deny deny_status 400 if {{ req.hdr_names -m sub _ }}
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    # no plain-HTTP listener at all; HSTS keeps a browser from trying one on the way (two years)
    http-response set-header Strict-Transport-Security "max-age=63072000"
    default_backend bridges

backend bridges
    balance roundrobin
    # one server connection per request (TLS sessions are resumed): an idle kept-alive connection
    # to an instance that just died would take a request HAProxy may not retry (a token exchange)
    option http-server-close
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    # a request already sent is retried elsewhere only when repeating it is harmless: GET/HEAD,
    # introspection (a read), the audit intake (de-duplicated by event_id), revocation (idempotent)
    # and the token exchange (a lost answer's token is held by no one; see the module docstring)
    http-request disable-l7-retry if !METH_GET !{{ path /introspect /audit/events /revoke /token }}
    default-server check {CHECK} check-ssl check-sni localhost {TLS_TO_SERVER} ca-file {ca_file}
{servers}
"""


class HaproxyService(Service):
    name = front.NAME
    apt_packages = ("haproxy",)
    needs = ("bridge", "bridge2")

    @property
    def config_file(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.dir / "admin.sock"

    def wait_states(self, want: dict[str, str], timeout: float = 20.0) -> dict[str, str]:
        """Wait until HAProxy reports each instance in the wanted state ("UP", "DOWN"); raises
        DevstackError naming what it saw (fault tests and the failover benchmark)."""
        import time

        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.server_states()
            if all(states.get(k, "").startswith(v) for k, v in want.items()):
                return states
            time.sleep(0.1)
        raise DevstackError(f"HAProxy states {states}, wanted {want}")

    def server_states(self) -> dict[str, str]:
        """``{instance: "UP" | "DOWN" | ...}`` from HAProxy's runtime API (tests, the benchmark)."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.admin_socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(","), strict=False))
            if row.get("pxname") == "bridges" and row.get("svname") not in ("BACKEND", "FRONTEND", None):
                out[row["svname"]] = row.get("status", "")
        return out

    def port(self) -> int:
        return front.port()

    def url(self) -> str:
        return front.url()

    def stop(self) -> bool:
        stopped = super().stop()
        (self.dir / "port").unlink(missing_ok=True)
        return stopped

    def prepare(self, ctx: StackContext) -> None:
        if not BINARY.exists() and shutil.which("haproxy") is None:
            raise DevstackError(f"haproxy: {BINARY} is missing (apt package haproxy)")
        pair = tls.issue("haproxy")
        pem = self.dir / "tls.pem"  # HAProxy wants certificate and key in one file
        pem.write_bytes(pair.cert.read_bytes() + pair.key.read_bytes())
        pem.chmod(0o600)
        self.config_file.write_text(haproxy_config(
            port=self.port(), cert_pem=pem, ca_file=ctx.ca_file,
            backends={b.name: b.port() for b in INSTANCES}, admin_socket=self.admin_socket))
        process.run([str(BINARY), "-c", "-q", "-f", str(self.config_file)], what="haproxy: config check")

    def start(self, ctx: StackContext) -> None:
        # -db: stay in the foreground (the process group is what `down` stops)
        process.start(self.name, [str(BINARY), "-db", "-f", str(self.config_file)], cwd=self.dir)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        url = self.url()
        session = pinned_session(ctx.ca_file)

        def ready() -> bool:  # at least one instance passed its health checks
            return session.get(f"{url}/readyz", timeout=3).status_code == 200

        process.wait_until(ready, what="haproxy", timeout=30, rec=process.load(self.name), interval=0.2)
        return {"url": url, "backends": {b.name: b.own_url() for b in INSTANCES}, "config": str(self.config_file),
                "admin_socket": str(self.admin_socket)}


SERVICE = HaproxyService()
