"""The bridge itself in the dev stack: gunicorn over TLS on loopback, configured like a site would.

`prepare` writes `.devstack/bridge/bridge.yaml` from the other services' endpoints (Keycloak,
Samba AD, rsyslog, Orthanc ...) with every secret in its own 0600 file (`*_file` keys), migrates
the store, and `seed` runs one directory sync so the demo hospital's roles exist in Keycloak and
in the bridge's assignment store.  Orthanc's plugin is pointed at this bridge (JWKS, revocation
list, audit intake), so `make demo` shows the real chain: directory -> Keycloak -> bridge -> PACS.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bridge.devstack import process
from bridge.devstack.service import Service, StackContext
from bridge.devstack.state import free_port, port_open, project_root
from bridge.devstack.tls import issue
from bridge.http import pinned_session

#: secrets (names in .devstack/secrets.json) written to files the config names
SESSION_SECRET = "bridge-session"
KEK_SECRET = "bridge-kek"
TOOLS_CLIENT_SECRET = "bridge-tools-client"
AUDIT_INGEST_SECRET = "bridge-audit-ingest"
WORKERS = 2


class BridgeService(Service):
    name = "bridge"
    needs = ("keycloak", "samba", "rsyslog", "redis")

    @property
    def config_file(self) -> Path:
        return self.dir / "bridge.yaml"

    def port(self) -> int:
        """The bridge's port, chosen once per `up`: Keycloak's realm import needs the bridge's URL
        (callback, back-channel logout) before the bridge itself can start."""
        path = self.dir / "port"
        try:
            port = int(path.read_text())
            if self.running() or not port_open(port):
                return port
        except (OSError, ValueError):
            pass
        port = free_port()
        path.write_text(str(port))
        return port

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port()}"

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

    def settings_dict(self, ctx: StackContext, port: int) -> dict[str, Any]:
        """The bridge configuration for this stack (a plain mapping, validated by load_config)."""
        info = ctx.info
        url = f"https://127.0.0.1:{port}"
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
            "store": {"url": f"sqlite:///{self.dir / 'bridge.db'}"},
            "audit": {
                "spool_dir": str(self.dir / "audit-spool"),
                "checkpoint_key_file": str(self.dir / "audit-checkpoint.key"),
                "archive_dir": str(self.dir / "audit-archive"),
                "ingest_token_file": self._secret_file(ctx, AUDIT_INGEST_SECRET),
            },
        }
        if info.get("orthanc", {}).get("url"):
            data["pacs"]["orthanc_url"] = info["orthanc"]["url"]
        redis = info.get("redis", {})
        if redis.get("url"):  # shared rate limits across the workers (memory:// without it)
            data["web"] = {"rate_limit_storage_url": redis["url"], "rate_limit_storage_ca_file": ca,
                           "rate_limit_storage_password_file": self._secret_file(ctx, redis["password_secret"])}
        if rsyslog.get("port"):
            data["audit"].update({"syslog_host": rsyslog["host"], "syslog_port": rsyslog["port"],
                                  "syslog_ca_file": rsyslog.get("ca_file", ca)})
        return data

    def prepare(self, ctx: StackContext) -> None:
        from bridge.config import load_config
        from bridge.store.db import migrate

        data = self.settings_dict(ctx, self.port())
        self.config_file.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config_file.chmod(0o600)
        settings = load_config(self.config_file)  # a mistake here is ours: fail loudly now
        migrate(settings.store.url)
        # the first signing key exists before the workers start, as `pacs-bridge keys rotate` at install
        from bridge.store.db import engine
        from bridge.web.tokens import key_ring

        key_ring(settings, engine(settings.store.url)).active()

    @property
    def metrics_dir(self) -> Path:
        return self.dir / "prometheus"

    def start(self, ctx: StackContext) -> None:
        from bridge.config import load_config

        b = load_config(self.config_file).bridge
        argv = gunicorn_argv(f"{b.listen_host}:{b.listen_port}", b.tls_cert_file, b.tls_key_file)
        process.start(self.name, argv, env=gunicorn_env(self.config_file, self.metrics_dir), cwd=self.dir)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        from bridge.config import load_config

        settings = load_config(self.config_file)
        url = settings.bridge.public_url
        session = pinned_session(ctx.ca_file)

        def ready() -> bool:
            r = session.get(f"{url}/.well-known/oauth-authorization-server", timeout=3)
            return r.status_code == 200

        process.wait_until(ready, what="bridge (gunicorn)", timeout=60, rec=process.load(self.name))
        return {"url": url, "config": str(self.config_file), "store_url": settings.store.url,
                "tools_client_id": "pacs-tools", "tools_client_secret": TOOLS_CLIENT_SECRET,
                "audit_ingest_secret": AUDIT_INGEST_SECRET}

    def seed(self, ctx: StackContext) -> None:
        """One full sync, so the demo's roles exist before anybody logs in."""
        from bridge.config import load_config
        from bridge.sync.factory import build_runner

        runner = build_runner(load_config(self.config_file))
        report = runner.run(apply=True, allow_deletes=True, full=True)
        counts = report.counts() if callable(getattr(report, "counts", None)) else {}
        (self.dir / "first-sync.json").write_text(yaml.safe_dump(counts))


def gunicorn_argv(bind: str, cert: Path | None, key: Path | None, *, workers: int = WORKERS) -> list[str]:
    """How the bridge runs under gunicorn (also what a site's unit file does): TLS, the hooks of
    bridge/web/gunicorn_conf.py (metrics across workers), an access log with the worker pid and
    without the query string (no code or token ever lands in a log)."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    return [str(gunicorn), "--config", "python:bridge.web.gunicorn_conf", "--no-control-socket",
            "--workers", str(workers), "--bind", bind, "--certfile", str(cert), "--keyfile", str(key),
            "--access-logfile", "-", "--access-logformat", '%(h)s %(p)s "%(m)s %(U)s" %(s)s %(M)sms',
            "bridge.web.wsgi:app"]


def gunicorn_env(config_file: Path, metrics_dir: Path) -> dict[str, str]:
    """The workers' environment: the config, and prometheus-client's multiprocess directory
    (emptied by the master at start, see bridge/web/gunicorn_conf.py)."""
    return {"PACS_BRIDGE_CONFIG": str(config_file), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}


SERVICE = BridgeService()
