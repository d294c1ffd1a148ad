"""The bridge's web app under granian: one command line for every way it is run.

The dev stack (devstack/pacs_devstack/bridge.py), docker-compose.yml and the systemd unit all end up here
(the latter two through ``pacs-bridge web``), so a setting added for one is there for all of them.
The process is ``python -m bridge.deploy.web_server``: it prepares what the workers share, then
granian serves ``bridge.web.wsgi:app`` over TLS.

Why granian (a Rust HTTP/1.1 and TLS server with a WSGI interface) and not gunicorn: the
gateway's added latency (issue 11; docs/performance.md).  Under gunicorn each request crossed
Python's HTTP parser, Python's ``ssl`` module and gunicorn's thread hand-offs once more on the way
in and out; granian does parsing, TLS and connection handling natively and hands the WSGI app a
ready environ.  What gunicorn did for the bridge and where it went:

* **metrics directory** (prometheus-client's multiprocess mode): emptied here before the workers
  start, as gunicorn's ``on_starting`` hook did.  The bridge has no live gauges (counters and
  histograms only), so a dead worker leaves nothing that would be reported as current;
* **access log without secrets**: granian's access log, through
  :class:`bridge.web.access_log.RedactingFilter` (share links redacted, control characters
  escaped, the nearest hop's ``X-Forwarded-For``, the worker's pid); no query string is logged;
* **forwarded headers**: granian trusts none (it has no such setting); ProxyFix with
  ``web.trusted_proxy_hops`` decides alone (bridge/web/client.py);
* **the raw request path**: granian gives none (no ``RAW_URI``); the gateway's path rules work on
  the decoded path and it re-encodes what it forwards (bridge/web/gateway/rules.py).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path

WORKERS = 2
#: Python threads per worker running the app (one serves while another waits on the database,
#: Keycloak or Orthanc); 2 beat 4 and 8 on two cores (docs/performance.md, tokens)
THREADS = 2
#: prometheus-client's multiprocess directory (emptied at start, see :func:`prepare_metrics_dir`)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: the WSGI app the workers load
APP = "bridge.web.wsgi:app"
#: no code, token or query string ever lands in the access log (``path`` is the path only, redacted
#: by bridge/web/access_log.py, which also sets ``pid`` and keeps the nearest hop's X-Forwarded-For)
ACCESS_LOG_FORMAT = '%(addr)s <%(pid)s> "%(method)s %(path)s" %(status)d %(dt_ms).0fms xff=%(header{x-forwarded-for})s'
#: granian's read buffer for a request head, in bytes.  Measured with granian 2.8.9: a head over
#: about 112 KiB gets 431, as do more than 100 headers; a request line over 64 KiB gets 414.
#: The bridge's own requests and Keycloak's are far smaller.
MAX_HEAD_BYTES = 64 * 1024
#: a client that has not sent a whole request head in this time is disconnected (slow clients)
HEAD_TIMEOUT_MS = 30_000
#: on SIGTERM, requests in flight get this long to finish before the workers are killed
GRACEFUL_SECONDS = 30
#: the processes' name (Linux keeps 15 bytes)
PROCESS_NAME = b"pacs-bridge-web"
PR_SET_NAME = 15


def web_argv(bind: str, cert: Path | None, key: Path | None, *, workers: int = WORKERS,
             threads: int = THREADS) -> list[str]:
    """The command that runs the bridge's web app: this module under the interpreter running the
    bridge (same venv or image), never a server from PATH."""
    if cert is None or key is None:
        raise ValueError("bridge.tls_cert_file and bridge.tls_key_file: the web app serves TLS only")
    return [sys.executable, "-m", "bridge.deploy.web_server", "--bind", bind, "--cert", str(cert),
            "--key", str(key), "--workers", str(workers), "--threads", str(threads)]


def web_env(config_file: Path, metrics_dir: Path) -> dict[str, str]:
    """The workers' environment: the config, and prometheus-client's multiprocess directory."""
    return {"PACS_BRIDGE_CONFIG": str(config_file), MULTIPROC_ENV: str(metrics_dir)}


def split_bind(bind: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); a clear error naming the value otherwise."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--bind {bind!r}: expected host:port or [ipv6]:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def prepare_metrics_dir() -> None:
    """An empty metrics directory (created 0700 if missing) before any worker counts: files of a
    previous run would be summed into this one's counters."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    d = Path(path)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in d.glob("*.db"):
        f.unlink(missing_ok=True)


def log_config() -> dict[str, object]:
    """granian's logging, with the access lines through the redacting filter (granian merges this
    over its own defaults key by key, so every key is given whole)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "bridge.web.access_log.RedactingFilter"}},
        "formatters": {
            "generic": {"()": "logging.Formatter", "fmt": "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"},
            "access": {"()": "logging.Formatter", "fmt": "%(message)s"},
        },
        "handlers": {
            "console": {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                       "filters": ["redact"]},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def build_server(bind: str, cert: Path, key: Path, *, workers: int = WORKERS, threads: int = THREADS):
    """granian's server for the bridge, configured but not started; a ValueError naming the
    argument when the address, certificate or key is wrong."""
    host, port = split_bind(bind)
    for name, path in (("--cert", cert), ("--key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{name} {path}: no such file")
    from granian.constants import HTTPModes, Interfaces, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    try:
        return Server(
            APP, address=host, port=port, interface=Interfaces.WSGI, workers=workers, blocking_threads=threads,
            http=HTTPModes.http1, websockets=False,
            http1_settings=HTTP1Settings(header_read_timeout=HEAD_TIMEOUT_MS, keep_alive=True,
                                         max_buffer_size=MAX_HEAD_BYTES, pipeline_flush=False),
            ssl_cert=Path(cert), ssl_key=Path(key), ssl_protocol_min=SSLProtocols.tls12,
            log_dictconfig=log_config(), log_access=True, log_access_format=ACCESS_LOG_FORMAT,
            respawn_failed_workers=True, workers_kill_timeout=GRACEFUL_SECONDS,
        )
    except ssl.SSLError as exc:  # granian loads the pair once in this process before any worker starts
        raise ValueError(f"--cert {cert} / --key {key}: not a matching PEM certificate and key "
                         f"({exc.reason})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.deploy.web_server",
                                     description="The bridge's web app under granian, TLS only.")
    parser.add_argument("--bind", required=True, help="host:port or [ipv6]:port")
    parser.add_argument("--cert", required=True, type=Path, help="TLS certificate chain (PEM)")
    parser.add_argument("--key", required=True, type=Path, help="its private key (PEM)")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--threads", type=int, default=THREADS, help="app threads per worker")
    args = parser.parse_args(argv)
    try:
        server = build_server(args.bind, args.cert, args.key, workers=args.workers, threads=args.threads)
    except ValueError as exc:
        print(f"pacs-bridge web: {exc}", file=sys.stderr)
        return 2
    prepare_metrics_dir()
    for name in scrub_environment(os.environ):
        print(f"pacs-bridge web: environment variable {name} removed (it would read as a request field)",
              file=sys.stderr)
    name_process()
    server.serve()
    return 0


#: WSGI environ keys a server sets from the request (PEP 3333, CGI): never taken from the process
CGI_KEYS = frozenset({"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
                      "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_HOST", "REMOTE_USER",
                      "AUTH_TYPE", "HTTPS", "RAW_URI", "REQUEST_URI"})


def scrub_environment(env: MutableMapping[str, str]) -> list[str]:
    """Remove from ``env`` what would pose as part of a request; returns the names removed.

    Why: granian starts every request's WSGI environ as a copy of the process environment (as CGI
    did).  A variable named like a request header (``HTTP_X_FORWARDED_FOR``, ``HTTP_AUTHORIZATION``,
    ``HTTP_PROXY``) would then be a header of every request that lacks it: a forged client address
    for ProxyFix, a credential, a header forwarded to Orthanc.  The bridge's own outgoing requests
    are HTTPS, so ``HTTPS_PROXY`` (kept) is the proxy setting that matters to them."""
    removed = sorted(k for k in env if k.startswith("HTTP_") or k in CGI_KEYS)
    for k in removed:
        del env[k]
    return removed


def name_process(name: bytes = PROCESS_NAME) -> None:
    """Give this process (and the workers it forks) the name ``top``, ``ss -p`` and the socket
    inventory show, instead of ``python``; best effort (Linux ``prctl``)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
