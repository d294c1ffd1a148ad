"""The bridge's web app under gunicorn: one command line for every way it is run.

The dev stack (devstack/pacs_devstack/bridge.py), docker-compose.yml and the systemd unit all end up here
(the latter two through ``pacs-bridge web``), so a flag added for one is there for all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

WORKERS = 2
THREADS = 2  # per worker (gthread): 2 beat 4 and 8 on two cores (docs/performance.md, tokens)
#: gthread, serving a connection's next request in the same thread when it follows at once (why: its module)
WORKER_CLASS = "bridge.web.gunicorn_worker.LingeringThreadWorker"
#: prometheus-client's multiprocess directory (bridge/web/gunicorn_conf.py empties it at start)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: memory-backed directory for the workers' heartbeat files
SHM = "/dev/shm"  # noqa: S108 - gunicorn makes an unlinked mkstemp file there, no fixed name
#: no code, token or query string ever lands in the access log (%(U)s is the path only)
ACCESS_LOG_FORMAT = '%(h)s %(p)s "%(m)s %(U)s" %(s)s %(M)sms xff=%({x-forwarded-for}i)s'


def gunicorn_executable() -> Path:
    """gunicorn of the interpreter running the bridge (same venv / image), never one from PATH."""
    return Path(sys.executable).with_name("gunicorn")


def gunicorn_argv(bind: str, cert: Path | None, key: Path | None, *, workers: int = WORKERS,
                  threads: int = THREADS) -> list[str]:
    """How the bridge runs under gunicorn: TLS, the hooks of bridge/web/gunicorn_conf.py (metrics
    across workers), gthread workers (one serves another request while a thread waits on the
    database or Keycloak; bridge/web/gunicorn_worker.py), an access log with the worker pid, the
    X-Forwarded-For chain a proxy passes on, and without the query string."""
    if cert is None or key is None:
        raise ValueError("bridge.tls_cert_file and bridge.tls_key_file: the web app serves TLS only")
    return [str(gunicorn_executable()), "--config", "python:bridge.web.gunicorn_conf", "--no-control-socket",
            "--workers", str(workers), "--threads", str(threads), "--worker-class", WORKER_CLASS,
            "--bind", bind, "--certfile", str(cert),
            "--keyfile", str(key), "--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT,
            *_tmp_dir(), "bridge.web.wsgi:app"]


def _tmp_dir() -> list[str]:
    """Each worker's heartbeat file in memory where there is a ``/dev/shm`` (gunicorn changes the
    file's mode at every turn of a worker's loop: on a disk or overlay filesystem that is a metadata
    write per request, and it blocked the worker when the disk was busy)."""
    return ["--worker-tmp-dir", SHM] if Path(SHM).is_dir() else []


def gunicorn_env(config_file: Path, metrics_dir: Path) -> dict[str, str]:
    """The workers' environment: the config, and prometheus-client's multiprocess directory."""
    return {"PACS_BRIDGE_CONFIG": str(config_file), MULTIPROC_ENV: str(metrics_dir)}
