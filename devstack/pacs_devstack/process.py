"""Start and stop the stack's server processes so that `down` stops exactly what `up` started.

Each process runs in its own session (process group) and is recorded in
`<service>/process.json` with its pid, process group and kernel start time.  `stop` checks the
start time before signalling, so a recycled pid is never killed; it signals the whole group,
so children (Keycloak's JVM under kc.sh, PostgreSQL's backends) go too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import BridgeError
from pacs_devstack.state import service_dir


class DevstackError(BridgeError, RuntimeError):
    """A service could not be installed, started or reached; the message says where to look."""

    exit_code = 1
    area = "devstack"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime) counted after the ")" that ends the command name
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Managed:
    """A recorded process of the stack."""

    name: str
    pid: int
    pgid: int
    start_time: str | None
    log: str
    argv: list[str]

    @property
    def record(self) -> Path:
        return service_dir(self.name) / "process.json"

    def running(self) -> bool:
        return alive(self.pid) and _start_time(self.pid) == self.start_time


def load(name: str) -> Managed | None:
    path = service_dir(name) / "process.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Managed(**data)


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin_pipe: bool = False,
    log_name: str = "server.log",
) -> Managed:
    """Start `argv` detached in its own session, output to `<service>/<log_name>`, and record it."""
    existing = load(name)
    if existing and existing.running():
        raise DevstackError(f"{name} is already running (pid {existing.pid}); run `pacs-bridge devstack down`")
    log_path = service_dir(name) / log_name
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    rec = Managed(
        name=name,
        pid=proc.pid,
        pgid=proc.pid,
        start_time=_start_time(proc.pid),
        log=str(log_path),
        argv=list(argv),
    )
    rec.record.write_text(json.dumps(rec.__dict__, indent=2))
    return rec


def stop(name: str, timeout: float = 15.0, first_signal: signal.Signals = signal.SIGTERM) -> bool:
    """Stop the recorded process group of `name`; True if something was stopped.

    `first_signal` is the server's own "shut down cleanly" signal (PostgreSQL's fast shutdown is
    SIGINT); SIGKILL follows after `timeout`."""
    rec = load(name)
    if rec is None:
        return False
    stopped = False
    if rec.running():
        for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(rec.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and rec.running():
                _reap(rec.pid)
                time.sleep(0.1)
            if not rec.running():
                break
        stopped = True
    # children that outlived the leader still carry the group id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pgid, signal.SIGKILL)
    rec.record.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    rec: Managed | None = None,
    interval: float = 0.25,
) -> None:
    """Poll `check` until true; on timeout or process death raise with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - a failing probe means "not yet"
            pass
        if rec is not None and not rec.running():
            raise DevstackError(f"{what}: the process exited during start-up; see {rec.log}\n{tail(rec.log)}")
        time.sleep(interval)
    where = f"; see {rec.log}\n{tail(rec.log)}" if rec else ""
    raise DevstackError(f"{what}: not ready after {timeout:.0f} s{where}")


def tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def run(argv: Sequence[str], *, what: str, env: dict[str, str] | None = None, timeout: float = 600,
        cwd: Path | None = None, input_text: str | None = None) -> str:
    """Run a set-up command to completion; raise DevstackError with its output on failure."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, cwd=str(cwd) if cwd else None,
            env={**os.environ, **(env or {})}, input=input_text, check=False,
        )
    except FileNotFoundError:
        raise DevstackError(f"{what}: command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise DevstackError(f"{what}: timed out after {timeout:.0f} s: {' '.join(argv[:3])} ...") from None
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip().splitlines()[-30:]
        raise DevstackError(f"{what}: exit {res.returncode}\n" + "\n".join("    " + x for x in out))
    return res.stdout
