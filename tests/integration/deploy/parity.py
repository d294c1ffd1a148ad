"""Run a deployment's service definitions (compose services, systemd units) as local processes.

There is no container engine or init system to run them, so the parity tests do what those would:
the same command line, the same environment, and the same file layout, with every path the
deployment mounts or owns mapped under one temporary root (``/etc/pacs-bridge/x`` becomes
``ROOT/etc/pacs-bridge/x``).  Only paths are rewritten; nothing else of a command changes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?error}, ${X?error}, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        val = env.get(name)
        if op in (":-", "-"):
            return val if (val if op == ":-" else val is not None) else arg
        if op in (":?", "?"):
            if val is None or (op == ":?" and not val):
                raise KeyError(f"${{{name}}} is required: {arg}")
            return val
        return val or ""

    return _VAR.sub(sub, value)


@dataclass
class Root:
    """The temporary root every deployment path is mapped into."""

    path: Path
    prefixes: set[str] = field(default_factory=set)

    def local(self, target: str) -> Path:
        return self.path / target.lstrip("/")

    def own(self, target: str) -> Path:
        """Declare `target` (a mount target or a path the image/package installs) as mapped."""
        self.prefixes.add(target.rstrip("/") or "/")
        return self.local(target)

    def map(self, value: str) -> str:
        """Every mapped path inside `value` (a whole argument, ``--opt=/path``, a URL query) under the root."""
        if not self.prefixes:
            return value
        alternatives = "|".join(re.escape(p) for p in sorted(self.prefixes, key=len, reverse=True))
        # one pass: a mapped path (under /tmp itself) is never mapped again
        return re.sub(rf"(?<![\w/.-])({alternatives})(?=$|[/&:;)\s\"',])", lambda m: str(self.local(m.group(1))), value)


_HOST_PATH = re.compile(r"(?<![\w/.-])/(?:etc|var|run|opt|srv|home)/[^\s&\"',]*")


def assert_mapped(argv: list[str], env: Mapping[str, str]) -> None:
    """No deployment path was left unmapped (it would read or write this machine's real /etc, /var ...)."""
    for value in [*argv, *env.values()]:
        left = _HOST_PATH.findall(value)
        assert not left, f"unmapped deployment path(s) {left} in {value!r}"


def place(src: Path, dst: Path) -> None:
    """A bind mount's content at its target (a copy: the processes run as this user)."""
    if not src.exists():
        raise FileNotFoundError(f"mount source {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def https_status(port: int, path: str, ca: str, method: str = "GET", **kw: object) -> int:
    """Orthanc's answer over HTTPS verified against the site CA (it serves nothing else)."""
    import requests

    return requests.request(method, f"https://127.0.0.1:{port}{path}", verify=ca, timeout=5,
                            **kw).status_code  # type: ignore[arg-type]


def plain_http_answered(port: int) -> bool:
    """Whether anything answers plain HTTP on ``port`` (Orthanc must not)."""
    import requests

    try:
        requests.get(f"http://127.0.0.1:{port}/system", timeout=5)
    except requests.exceptions.ConnectionError:
        return False
    return True


def base_env(home: Path) -> dict[str, str]:
    """What the image or the host provides besides the service's own environment: PATH, the
    worktree on PYTHONPATH (the image installs the same package), a HOME."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def local_argv(argv: list[str]) -> list[str]:
    """`pacs-bridge ...` (the image's console script) runs from this interpreter and checkout."""
    if argv and Path(argv[0]).name == "pacs-bridge":
        return [sys.executable, "-m", "bridge.cli", *argv[1:]]
    return argv


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


class Runner:
    """Starts the processes of one test and stops exactly those (their process groups)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    def run(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 30) -> str:
        """A one-shot command; its output, or an assertion error with it."""
        argv = local_argv(argv)
        assert_mapped(argv, env)
        res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                             timeout=timeout, check=False)
        out = res.stdout + res.stderr
        assert res.returncode == 0, f"{name}: {argv} exited {res.returncode}:\n{out}"
        return out

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        argv = local_argv(argv)
        assert_mapped(argv, env)
        log = self.logs / f"{name}.log"
        fh = log.open("wb")
        popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.alive():
                os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)


def wait_for(check: Callable[[], bool], what: str, procs: Iterable[Proc], timeout: float = 40) -> None:
    """Poll `check` until true; fail early (with the logs) when a watched process died."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.name} exited {p.popen.returncode} while waiting for {what}:\n{p.text()}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.text()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def ensure_packages(*extra: str) -> None:
    """The Debian packages the deployment runs (Orthanc's, as in its image; `extra`), installed by
    the dev stack's installer when missing (CI), so a missing one fails loudly, never skips."""
    from pacs_devstack.install import apt_install
    from pacs_devstack.orthanc import OrthancService

    apt_install((*OrthancService.apt_packages, *extra))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def site_files(site: Path, ca_file: Path) -> dict[str, Path]:
    """A site's own files (the parts the repository does not ship): TLS pairs for the bridge and
    Orthanc's peers from the test CA, Orthanc's HTTPS / DICOM TLS files (its certificate, the same
    with its key in one PEM, and the modalities' CA), and one file per secret."""
    import base64
    import secrets as pysecrets

    from pacs_devstack.tls import MODALITY_CA, ensure_ca, issue, pem_bundle

    # the bridge's own name is loopback here; PostgreSQL's is "postgres", the name clients verify
    for service, pair in (("bridge", issue("deploy-parity")), ("postgres", issue("deploy-postgres",
                                                                                  extra_dns=("postgres",)))):
        tls = site / "tls" / service
        tls.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pair.cert, tls / "cert.pem")
        shutil.copy2(pair.key, tls / "key.pem")
    orthanc, pair = site / "tls" / "orthanc", issue("deploy-orthanc")
    orthanc.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pair.cert, orthanc / "cert.pem")
    shutil.copy2(pair.key, orthanc / "key.pem")
    pem_bundle(pair, orthanc / "https.pem")
    shutil.copy2(ensure_ca(MODALITY_CA), orthanc / "modality-ca.pem")
    sec = site / "secrets"
    sec.mkdir(parents=True, exist_ok=True)
    values = {
        "session_secret": pysecrets.token_urlsafe(32), "keycloak_client_secret": pysecrets.token_urlsafe(24),
        "keycloak_sync_password": pysecrets.token_urlsafe(24), "directory_bind_password": pysecrets.token_urlsafe(24),
        "bridge_db_pgpass": f"postgres:5432:bridge:bridge:{pysecrets.token_urlsafe(24)}",
        "token_kek": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "audit_ingest_token": pysecrets.token_urlsafe(32),
        "postgres_superuser_password": pysecrets.token_urlsafe(24),
        "keycloak_db_password": pysecrets.token_urlsafe(24), "keycloak_admin_password": pysecrets.token_urlsafe(24),
    }
    for name, value in values.items():
        (sec / name).write_text(value + "\n")
        (sec / name).chmod(0o600)
    return {"ca": ca_file, "site": site}


def dicom_refused(port: int, called: str, calling: str, source: str = "127.0.0.1") -> bool:
    """Whether Orthanc refuses an association from `calling` at `source` (rejected or aborted)."""
    return _associate(port, called, calling, source) is None


def dicom_echo(port: int, called: str, calling: str, source: str) -> int | None:
    """C-ECHO status from `calling` at `source` (None: association refused)."""
    return _associate(port, called, calling, source)


def _associate(port: int, called: str, calling: str, source: str) -> int | None:
    """Over DICOM TLS with a certificate of the modalities' CA (site_files), so what decides is
    Orthanc's AE title / host rule, not the TLS step."""
    from pynetdicom import AE

    from pacs_devstack.orthanc import modality_tls

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0), tls_args=modality_tls())
    if not assoc.is_established:
        assert assoc.is_rejected or assoc.is_aborted
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()


#: the site's modality hosts become these loopback addresses in the tests: no modality exists here,
#: and 127.0.0.0/8 reaches lo without touching any network (the test may run in the host namespace)
LOOPBACK_MODALITY_HOSTS = "127.0.0.{}"


def loopback_modalities(site_yaml: Path) -> None:
    """Point each modality of a placed site configuration at its own loopback address (127.0.0.11,
    .12, ...), so a DICOM peer can come "from the host its modality entry names" on this machine.
    The only change the parity tests make to the site's files."""
    import yaml

    data = yaml.safe_load(site_yaml.read_text())
    for i, entry in enumerate((data.get("pacs") or {}).get("modalities", {}).values()):
        entry["host"] = LOOPBACK_MODALITY_HOSTS.format(11 + i)
    site_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


def add_loopback_address(address: str) -> None:
    """Make ``address`` usable as a DICOM peer's source.  Loopback addresses need nothing (lo
    answers all of 127.0.0.0/8); any other address is added to lo only inside a private network
    namespace (one with nothing but lo): the host's network is never touched."""
    if address.startswith("127."):
        return
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True, timeout=10)
    assert [ln.split(":")[1].strip() for ln in links.stdout.splitlines()] == ["lo"], \
        "run the deploy tests in a private network namespace (e.g. `unshare -rn`)"
    subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "lo"], check=True, timeout=10)
