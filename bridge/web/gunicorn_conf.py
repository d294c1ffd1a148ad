"""gunicorn hooks for the bridge (``gunicorn -c python:bridge.web.gunicorn_conf bridge.web.wsgi:app``).

prometheus-client's multiprocess mode (bridge/web/metrics.py) keeps each worker's values in files
under ``PROMETHEUS_MULTIPROC_DIR``.  Files of a previous run would be summed into this one's
counters, so the master empties the directory once at start; when a worker exits its live gauges
are dropped (its counters stay: they were counted).

Forwarded headers: gunicorn by default believes ``X-Forwarded-Proto`` / ``-Ssl`` / ``-Protocol``
from loopback peers (``forwarded_allow_ips``), so any local client could make the bridge build
``http://`` URLs.  The bridge trusts forwarded headers in one place only, ProxyFix with
``web.trusted_proxy_hops`` (bridge/web/client.py), so gunicorn trusts nobody.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: gunicorn setting: no peer may set the URL scheme or script name through headers
forwarded_allow_ips = ""
#: gunicorn setting: the access log never shows a share link (bridge/web/access_log.py)
logger_class = "bridge.web.access_log.RedactingLogger"


def on_starting(server: Any) -> None:
    """Master start: an empty metrics directory (created 0700 if missing)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    d = Path(path)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in d.glob("*.db"):
        f.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: remove its live-gauge files so they are not reported as current."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)
