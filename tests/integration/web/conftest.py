"""A second bridge under the web server (granian) with 2 workers, on the dev stack's config, Redis and database.

The dev stack's own bridge serves the other tests; tight limits for a test must not lock them out,
so limit tests run this one: same code path (devstack/pacs_devstack/bridge.py's web server command and
environment), own port, own rate-limit key prefix, limits and ``web.*`` overrides through the
environment, exactly as a site would set them.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.config import load_config
from bridge.http import pinned_session
from pacs_devstack import process
from pacs_devstack.bridge import WORKERS, web_argv, web_env
from pacs_devstack.state import free_port

_PID = re.compile(r'^\S+ <(\d+)> "(\S+) (\S+)" (\d{3}) ')


@dataclass
class WebServer:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    ca_file: str

    def session(self) -> requests.Session:
        return pinned_session(self.ca_file)

    def get_many(self, path: str, n: int, *, threads: int = 4) -> list[int]:
        """n GETs, ``threads`` at a time, each on its own connection (so both workers answer)."""
        def one(_: int) -> int:
            with self.session() as s:
                return s.get(self.url + path, timeout=30).status_code

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(n)))

    def pids(self, path: str) -> dict[str, list[int]]:
        """Worker pid -> statuses it answered for ``path`` (from the access log)."""
        out: dict[str, list[int]] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            m = _PID.match(line)
            if m and m.group(3) == path:
                out.setdefault(m.group(1), []).append(int(m.group(4)))
        return out


def bridge_info(stack: dict[str, Any]) -> dict[str, Any]:
    for name in ("bridge", "redis"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run")
    return dict(stack["bridge"])


@pytest.fixture(scope="module")
def start_web_server(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Callable[[dict[str, str]], WebServer]]:
    """Start a 2-worker bridge with extra environment; stopped at the end of the module."""
    info = bridge_info(stack)
    config = Path(info["config"])
    b = load_config(config).bridge
    started: list[WebServer] = []

    def start(env: dict[str, str]) -> WebServer:
        work = tmp_path_factory.mktemp("web")
        port = free_port()
        log = work / "web.log"
        full_env = {**web_env(config, work / "prometheus"),
                    "PACS_BRIDGE_FLASK_RATELIMIT_KEY_PREFIX": f"test-{secrets.token_hex(6)}", **env}
        with open(log, "ab") as out:
            proc = subprocess.Popen(web_argv(f"127.0.0.1:{port}", b.tls_cert_file, b.tls_key_file),
                                    env={**__import__("os").environ, **full_env}, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=work)
        g = WebServer(f"https://127.0.0.1:{port}", log, proc, stack["ca"]["file"])
        started.append(g)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"web server exited ({proc.returncode}):\n{process.tail(log)}")
            with g.session() as s:
                return s.get(g.url + "/jwks.json", timeout=3).status_code == 200

        process.wait_until(ready, what="test web server", timeout=90)

        def all_workers_serve() -> bool:
            # a worker accepts only once it has loaded the app: wait until each has answered
            g.get_many("/jwks.json", 8)
            return len(g.pids("/jwks.json")) >= WORKERS

        process.wait_until(all_workers_serve, what="test web server: every worker answering", timeout=90,
                           interval=0.5)
        return g

    yield start
    for g in started:
        g.proc.terminate()
        try:
            g.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            g.proc.kill()
            g.proc.wait(timeout=10)
