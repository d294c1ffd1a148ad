"""The bridge itself in the dev stack: granian over TLS on loopback, configured like a site would.

Two instances, ``bridge`` and ``bridge2`` (same configuration but the listen port, one PostgreSQL
database), behind HAProxy (devstack/pacs_devstack/haproxy.py), as a site runs them for availability.
When HAProxy is part of the stack, the public URL (token issuer, Keycloak callback, the Orthanc
plugin's JWKS and revocation list) is HAProxy's; otherwise it is the first instance's own.  Without
the ``postgres`` service (a narrowed stack) the store is a SQLite file in ``.devstack/bridge/``.

`prepare` writes `.devstack/bridge/bridge.yaml` from the other services' endpoints (Keycloak,
Samba AD, rsyslog, Orthanc ...) with every secret in its own 0600 file (`*_file` keys), migrates
the store, and `seed` runs one directory sync so the demo hospital's roles exist in Keycloak and
in the bridge's assignment store.  Orthanc's plugin is pointed at this bridge (JWKS, revocation
list, audit intake), so `make demo` shows the real chain: directory -> Keycloak -> bridge -> PACS.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# the canonical command line lives with the runtime (re-exported: tests import it from here)
from bridge.deploy.web_server import THREADS, WORKERS, web_argv, web_env  # noqa: F401
from bridge.http import pinned_session
from pacs_devstack import front, process, state
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import project_root
from pacs_devstack.tls import issue

#: secrets (names in .devstack/secrets.json) written to files the config names
SESSION_SECRET = "bridge-session"
KEK_SECRET = "bridge-kek"
TOOLS_CLIENT_SECRET = "bridge-tools-client"
AUDIT_INGEST_SECRET = "bridge-audit-ingest"
#: every client of the dev stack is 127.0.0.1, so the per-address limits of a site would throttle the
#: stack as a whole (the failover benchmark drives thousands of exchanges); a site keeps the defaults
DEV_RATE_LIMITS = {"TOKEN": "2000/second", "INTROSPECT": "2000/second", "AUDIT": "2000/second"}


#: the gateway's session rules in the dev stack: the realm's SSO Session Max is 10 h
#: (keycloak-realm/hospital-realm.json); tests may override any key with
#: ``PACS_BRIDGE_GATEWAY__<KEY>`` in the bridge's environment
GATEWAY_SETTINGS = {"keycloak_sso_max_seconds": 36000, "absolute_lifetime_seconds": 36000,
                    "idle_timeout_seconds": 900}


def selected(name: str) -> bool:
    """Whether service ``name`` is part of this stack (recorded by `stack.up` before any start)."""
    return name in state.read_stack().get(state.SELECTION, {}).get("services", ())


class BridgeService(Service):
    """One bridge instance.  ``first`` is None for the first instance; the second shares its
    secrets, signing-key encryption key, audit checkpoint key and database, and starts after it
    (the first migrates the store and creates the first signing key)."""

    def __init__(self, name: str = "bridge", first: BridgeService | None = None) -> None:
        self.name = name
        self.first = first
        self.needs = ("keycloak", "samba", "rsyslog", "redis", "postgres", *((first.name,) if first else ()))

    @property
    def shared_dir(self) -> Path:
        """Files every instance shares (the SQLite store, the checkpoint key, the audit archive)."""
        return self.first.dir if self.first else self.dir

    @property
    def config_file(self) -> Path:
        return self.dir / "bridge.yaml"

    def port(self) -> int:
        """The bridge's port, chosen once per `up`: Keycloak's realm import needs the bridge's URL
        (callback, back-channel logout) before the bridge itself can start."""
        return self.sticky_port()

    def own_url(self) -> str:
        """This instance itself (health checks, the failover benchmark's direct probes)."""
        return f"https://127.0.0.1:{self.port()}"

    def url(self) -> str:
        """The public URL: HAProxy's when it fronts the instances, else the first instance's."""
        if front.fronted():
            return front.url()
        return self.first.own_url() if self.first else self.own_url()

    def stop(self) -> bool:
        stopped = super().stop()
        (self.dir / "port").unlink(missing_ok=True)
        return stopped

    def _secret_file(self, ctx: StackContext, name: str, make: Callable[[], str] | None = None) -> str:
        d = self.dir / "secrets"
        d.mkdir(mode=0o700, exist_ok=True)
        path = d / name
        path.write_text(ctx.secret(name, make))
        path.chmod(0o600)
        return str(path)

    def store_url(self, ctx: StackContext) -> str:
        """PostgreSQL when it is part of the stack (the password in a 0600 libpq passfile, never in
        the configuration or a command line), else a SQLite file."""
        pg = ctx.info.get("postgres")
        if not pg or not pg.get("port"):
            return f"sqlite:///{self.shared_dir / 'bridge.db'}"
        from sqlalchemy.engine import URL

        from pacs_devstack.postgres import DB_NAME, DB_USER

        d = self.dir / "secrets"
        d.mkdir(mode=0o700, exist_ok=True)
        passfile = d / "pgpass"
        password = ctx.secret(pg["password_secret"]).replace("\\", "\\\\").replace(":", "\\:")
        passfile.write_text(f"{pg['host']}:{pg['port']}:{DB_NAME}:{DB_USER}:{password}\n")
        passfile.chmod(0o600)
        return URL.create(
            "postgresql+psycopg2", username=DB_USER, host=str(pg["host"]), port=int(pg["port"]), database=DB_NAME,
            query={"sslmode": "verify-full", "sslrootcert": str(pg["ca_file"]), "passfile": str(passfile)},
        ).render_as_string(hide_password=False)

    def settings_dict(self, ctx: StackContext, port: int) -> dict[str, Any]:
        """The bridge configuration for this stack (a plain mapping, validated by load_config)."""
        info = ctx.info
        url = self.url()
        pair = issue("bridge")
        kc, samba, rsyslog = info.get("keycloak", {}), info.get("samba", {}), info.get("rsyslog", {})
        ca = str(ctx.ca_file)
        data: dict[str, Any] = {
            "bridge": {
                "public_url": url, "listen_host": "127.0.0.1", "listen_port": port,
                "tls_cert_file": str(pair.cert), "tls_key_file": str(pair.key),
                "session_secret_file": self._secret_file(ctx, SESSION_SECRET),
                "viewer_redirect_uris": [f"{url}/demo/viewer"],
            },
            "keycloak": {
                "url": kc.get("url", "https://127.0.0.1:1"), "realm": kc.get("realm", "hospital"),
                "client_id": "pacs-bridge", "ca_file": ca,
                "client_secret_file": self._secret_file(ctx, kc.get("client_secret_secret", "kc-pacs-bridge-client")),
                "admin_realm": "master", "admin_username": kc.get("admin_username", "admin"),
                "admin_password_file": self._secret_file(ctx, kc.get("admin_password_secret", "keycloak-admin")),
            },
            "directory": {
                "kind": "ad", "url": samba.get("ldaps_url", "ldaps://127.0.0.1:636"),
                "bind_dn": samba.get("bind_dn", ""), "base_dn": samba.get("base_dn", "DC=hospital,DC=test"),
                "users_dn": samba.get("users_dn"), "groups_dn": samba.get("groups_dn"), "ca_file": ca,
                "bind_password_file": self._secret_file(ctx, samba.get("bind_password_secret", "directory-bind")),
            },
            "pacs": {"audience": "pacs"},
            "tokens": {
                "key_encryption_key_file": self._secret_file(
                    ctx, KEK_SECRET, lambda: base64.urlsafe_b64encode(os.urandom(32)).decode()),
                "clients": [
                    {"client_id": "pacs-viewer"},
                    {"client_id": "pacs-tools", "client_secret_file": self._secret_file(ctx, TOOLS_CLIENT_SECRET),
                     "may_introspect": True, "may_revoke_any": True},
                ],
            },
            "sync": {
                "policy_file": str(project_root() / "examples" / "policy.yaml"),
                "targets": ["keycloak", "store"],
            },
            "store": {"url": self.store_url(ctx)},
            "audit": {
                "spool_dir": str(self.dir / "audit-spool"),
                "checkpoint_key_file": str(self.shared_dir / "audit-checkpoint.key"),
                "archive_dir": str(self.shared_dir / "audit-archive"),
                "ingest_token_file": self._secret_file(ctx, AUDIT_INGEST_SECRET),
            },
        }
        if selected("orthanc"):  # Orthanc serves HTTPS only, with a stack CA certificate; the browser
            from pacs_devstack.orthanc import SERVICE as ORTHANC  # gateway goes there (docs/gateway.md)

            # its port is fixed for this `up` before it starts (it starts after the bridge)
            data["pacs"].update({"orthanc_url": ORTHANC.internal_url(), "ca_file": ca})
            # the compliance report checks the image store's encryption from Orthanc's configuration
            data["compliance"] = {"orthanc_config": str(ORTHANC.config_file)}
            data["gateway"] = {"orthanc_url": ORTHANC.internal_url(), "orthanc_ca_file": ca, **GATEWAY_SETTINGS}
        redis = info.get("redis", {})
        web: dict[str, Any] = {}
        if redis.get("url"):  # shared rate limits across the workers (memory:// without it)
            web.update({"rate_limit_storage_url": redis["url"], "rate_limit_storage_ca_file": ca,
                        "rate_limit_storage_password_file": self._secret_file(ctx, redis["password_secret"])})
        if front.fronted():  # HAProxy appends the client's address: one trusted hop (rate limits, audit)
            web["trusted_proxy_hops"] = 1
        if web:
            data["web"] = web
        if rsyslog.get("port"):
            data["audit"].update({"syslog_host": rsyslog["host"], "syslog_port": rsyslog["port"],
                                  "syslog_ca_file": rsyslog.get("ca_file", ca)})
            if rsyslog.get("client_cert_file"):  # mutual TLS: the collector admits only this certificate
                data["audit"].update({"syslog_client_cert_file": rsyslog["client_cert_file"],
                                      "syslog_client_key_file": rsyslog["client_key_file"]})
        return data

    def prepare(self, ctx: StackContext) -> None:
        from bridge.config import load_config
        from bridge.store.db import migrate_store

        data = self.settings_dict(ctx, self.port())
        self.config_file.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config_file.chmod(0o600)
        settings = load_config(self.config_file)  # a mistake here is ours: fail loudly now
        migrate_store(settings)
        # the first signing key exists before the workers start, as `pacs-bridge keys rotate` at install
        from bridge.services import Services

        Services(settings).key_ring.active()

    @property
    def metrics_dir(self) -> Path:
        return self.dir / "prometheus"

    def start(self, ctx: StackContext) -> None:
        from bridge.config import load_config

        b = load_config(self.config_file).bridge
        argv = web_argv(f"{b.listen_host}:{b.listen_port}", b.tls_cert_file, b.tls_key_file)
        env = {**web_env(self.config_file, self.metrics_dir),
               **{f"PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_{k}": v for k, v in DEV_RATE_LIMITS.items()}}
        process.start(self.name, argv, env=env, cwd=self.dir)

    def kill(self) -> None:
        """SIGKILL the whole instance (master and workers), as a crash would; for fault tests."""
        import signal

        rec = process.load(self.name)
        if rec is not None and rec.running():
            os.killpg(rec.pgid, signal.SIGKILL)
            process.wait_until(lambda: not rec.running(), what=f"{self.name} killed", timeout=10, interval=0.05)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        from bridge.config import load_config

        settings = load_config(self.config_file)
        own = f"https://127.0.0.1:{settings.bridge.listen_port}"
        session = pinned_session(ctx.ca_file)

        def ready() -> bool:  # this instance itself, not through HAProxy (which may not run yet)
            return session.get(f"{own}/readyz", timeout=3).status_code == 200 and session.get(
                f"{own}/.well-known/oauth-authorization-server", timeout=3).status_code == 200

        process.wait_until(ready, what=f"{self.name} (web server)", timeout=60, rec=process.load(self.name))
        gateway = settings.bridge.public_url + settings.gateway.prefix + "/" if settings.gateway.enabled else None
        return {"url": settings.bridge.public_url, "instance_url": own, "config": str(self.config_file),
                "gateway_url": gateway,
                "store_url": settings.store.url,
                "tools_client_id": "pacs-tools", "tools_client_secret": TOOLS_CLIENT_SECRET,
                "audit_ingest_secret": AUDIT_INGEST_SECRET}

    def seed(self, ctx: StackContext) -> None:
        """One full sync, so the demo's roles exist before anybody logs in (by the first instance:
        they share the database)."""
        if self.first is not None:
            return
        from bridge.config import load_config
        from bridge.sync.factory import build_runner

        runner = build_runner(load_config(self.config_file))
        report = runner.run(apply=True, allow_deletes=True, full=True)
        counts = report.counts() if callable(getattr(report, "counts", None)) else {}
        (self.dir / "first-sync.json").write_text(yaml.safe_dump(counts))


SERVICE = BridgeService()
#: the second instance (service name ``bridge2``; see devstack/pacs_devstack/stack.py)
SECOND = BridgeService("bridge2", first=SERVICE)
INSTANCES = (SERVICE, SECOND)
