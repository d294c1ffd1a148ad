"""The systemd units under deploy/systemd/ pass `systemd-analyze verify` (with Debian's own
orthanc.service and the drop-in), carry the hardening docs/deploy.md promises, and run: each
unit's ExecStartPre/ExecStart, with its Environment= and EnvironmentFile=, as a local process with
every path the units and docs/deploy.md put on the host mapped under a temporary root
(parity.py).  Then the web app answers /jwks.json over TLS, Orthanc loads the bundle and refuses
a token-less request and an unknown AE, and `check-config` accepts the configuration.

The host's endpoints in pacs-bridge.env (public URL, Keycloak, directory, ATNA collector, the
PostgreSQL URL) are the site's to edit: the test edits them to loopback, and the database to a
SQLite file (no PostgreSQL named db.hospital.example here), as the compose parity test does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from parity import (
    REPO,
    Root,
    Runner,
    add_loopback_address,
    base_env,
    dicom_echo,
    dicom_refused,
    ensure_packages,
    https_status,
    loopback_modalities,
    plain_http_answered,
    port_open,
    site_files,
    wait_for,
)

pytestmark = pytest.mark.integration

UNITS = REPO / "deploy" / "systemd"
WEB, SERVE, CONFIG = "pacs-bridge-web.service", "pacs-bridge-serve.service", "pacs-bridge-orthanc-config.service"
DROP_IN = UNITS / "orthanc.service.d" / "pacs-bridge.conf"
DEBIAN_ORTHANC = Path("/lib/systemd/system/orthanc.service")
INSTALLED = "/opt/pacs-bridge/venv/bin/pacs-bridge"  # docs/deploy.md: the venv the units run
#: pacs-bridge.env keys that name this host's peers (the site edits them)
SITE_KEYS = {
    "PACS_BRIDGE_BRIDGE__PUBLIC_URL": "https://127.0.0.1:9443",
    "PACS_BRIDGE_KEYCLOAK__URL": "https://127.0.0.1:8443",
    "PACS_BRIDGE_DIRECTORY__URL": "ldaps://127.0.0.1:6360",
    "PACS_BRIDGE_AUDIT__SYSLOG_HOST": "127.0.0.1",
}


def directives(*files: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in order, later files (drop-ins) after; ``Key=`` empty resets a list."""
    out: list[tuple[str, str, str]] = []
    for f in files:
        section = ""
        for raw in f.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            if value == "":
                out = [d for d in out if not (d[0] == section and d[1] == key)]
            else:
                out.append((section, key, value))
    return out


def get(ds: list[tuple[str, str, str]], key: str) -> list[str]:
    return [v for _s, k, v in ds if k == key]


def test_units_verify_and_are_hardened(tmp_path: Path) -> None:
    ensure_packages("systemd")
    assert shutil.which("systemd-analyze"), "Debian's systemd package provides systemd-analyze"
    assert DEBIAN_ORTHANC.exists(), "Debian's orthanc package provides orthanc.service"
    units = tmp_path / "units"
    units.mkdir()
    for u in (WEB, SERVE, CONFIG):
        shutil.copy2(UNITS / u, units / u)
    shutil.copy2(DEBIAN_ORTHANC, units / "orthanc.service")
    (units / "orthanc.service.d").mkdir()
    shutil.copy2(DROP_IN, units / "orthanc.service.d" / DROP_IN.name)
    # verify checks that every command exists: the venv of docs/deploy.md, on a private /opt
    launcher = f"#!/bin/sh\nexec {sys.executable} -m bridge.cli \"$@\"\n"
    script = (f"mount -t tmpfs tmpfs /opt && mkdir -p {Path(INSTALLED).parent} && "
              f"printf '%s' '{launcher}' > {INSTALLED} && chmod 755 {INSTALLED} && "
              f"systemd-analyze verify {' '.join(str(units / u) for u in (WEB, SERVE, CONFIG))} orthanc.service")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                              "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60, check=False, cwd=units)
    assert res.returncode == 0 and not res.stderr.strip(), res.stdout + res.stderr

    for unit in (WEB, SERVE, CONFIG):
        ds = directives(UNITS / unit)
        assert get(ds, "User") == ["pacs-bridge"], unit
        assert get(ds, "ProtectSystem") == ["strict"] and get(ds, "NoNewPrivileges") == ["yes"], unit
        assert get(ds, "ReadWritePaths"), unit
        assert "\nCapabilityBoundingSet=\n" in (UNITS / unit).read_text(), f"{unit}: no capabilities"
        assert get(ds, "EnvironmentFile") == ["/etc/pacs-bridge/pacs-bridge.env"], unit
        assert all(not v.startswith("PACS_BRIDGE_") or "PASSWORD=" not in v for v in get(ds, "Environment"))
    orthanc = directives(DEBIAN_ORTHANC, DROP_IN)
    assert get(orthanc, "User") == ["orthanc"] and get(orthanc, "ProtectSystem") == ["strict"]
    (start,) = get(orthanc, "ExecStart")
    assert "/etc/orthanc/pacs-bridge/orthanc.json" in start


def _env(ds: list[tuple[str, str, str]], root: Root) -> dict[str, str]:
    env = base_env(root.local("/var/lib/pacs-bridge"))
    for path in get(ds, "EnvironmentFile"):
        for line in root.local(path.lstrip("-")).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k] = root.map(v)
    for assignment in get(ds, "Environment"):
        k, _, v = assignment.partition("=")
        env[k] = root.map(v)
    return env


def _dirs(ds: list[tuple[str, str, str]], root: Root) -> None:
    """What systemd creates (State/Runtime/LogsDirectory) and ReadWritePaths, mapped."""
    for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run"), ("LogsDirectory", "/var/log")):
        for name in get(ds, key):
            root.own(f"{base}/{name}").mkdir(parents=True, exist_ok=True)
    for path in " ".join(get(ds, "ReadWritePaths")).split():
        root.own(path.lstrip("-")).mkdir(parents=True, exist_ok=True)


def test_units_run_as_processes(tmp_path: Path) -> None:
    from pacs_devstack.tls import ensure_ca

    ensure_packages()
    root = Root(tmp_path / "root")
    root.path.mkdir()
    runner = Runner(tmp_path / "logs")
    site = tmp_path / "site"
    site_files(site, ensure_ca())
    # docs/deploy.md's install steps: /etc/pacs-bridge with the site's files
    etc = root.own("/etc/pacs-bridge")
    etc.mkdir(parents=True)
    shutil.copy2(REPO / "deploy/bridge.yaml", etc / "bridge.yaml")
    loopback_modalities(etc / "bridge.yaml")
    shutil.copy2(REPO / "examples/policy.yaml", etc / "policy.yaml")
    shutil.copytree(site / "tls", etc / "tls")
    shutil.copy2(ensure_ca(), etc / "tls" / "hospital-ca.pem")
    shutil.copytree(site / "secrets", etc / "secrets")
    shutil.copytree(site / "tls" / "orthanc", root.own("/etc/orthanc/tls"))  # docs/deploy.md: Orthanc's TLS files
    env_text = (UNITS / "pacs-bridge.env").read_text()
    lines = []
    for line in env_text.splitlines():
        key = line.partition("=")[0]
        if key in SITE_KEYS:
            line = f"{key}={SITE_KEYS[key]}"
        elif key == "PACS_BRIDGE_STORE__URL":
            assert "sslmode=verify-full" in line
            line = f"{key}=sqlite:///{root.local('/var/lib/pacs-bridge')}/bridge.db"
        lines.append(line)
    (etc / "pacs-bridge.env").write_text("\n".join(lines) + "\n")
    root.own("/etc/orthanc/pacs-bridge").mkdir(parents=True)

    units = {u: directives(UNITS / u) for u in (WEB, SERVE, CONFIG)}
    orthanc = directives(DEBIAN_ORTHANC, DROP_IN)
    for ds in [*units.values(), orthanc]:
        _dirs(ds, root)

    def argv(cmd: str) -> list[str]:
        return [root.map(a) for a in cmd.split()]

    try:
        web_env = _env(units[WEB], root)
        out = runner.run("check-config", ["pacs-bridge", "check-config", web_env["PACS_BRIDGE_CONFIG"]], web_env,
                         root.local("/var/lib/pacs-bridge"))
        assert ": OK" in out
        ds = units[CONFIG]
        for cmd in [*get(ds, "ExecStartPre"), *get(ds, "ExecStart")]:
            runner.run(CONFIG, argv(cmd), _env(ds, root), root.local(get(ds, "WorkingDirectory")[0]))
        generated = json.loads(root.local("/etc/orthanc/pacs-bridge/orthanc.json").read_text())
        assert generated["RemoteAccessAllowed"] is False  # a host: the reverse proxy is local

        procs = []
        for unit in (WEB, SERVE):
            ds = units[unit]
            cwd = root.local(get(ds, "WorkingDirectory")[0])
            for cmd in get(ds, "ExecStartPre"):
                runner.run(unit, argv(cmd), _env(ds, root), cwd)
            (cmd,) = get(ds, "ExecStart")
            procs.append(runner.start(unit, argv(cmd), _env(ds, root), cwd))
        (cmd,) = get(orthanc, "ExecStart")
        orthanc_env = {**base_env(root.path), **{k: root.map(v) for k, _, v in
                                                 (e.partition("=") for e in get(orthanc, "Environment"))}}
        orthanc_proc = runner.start("orthanc", argv(cmd), orthanc_env, root.path)
        procs.append(orthanc_proc)
        ca = str(root.local("/etc/pacs-bridge/tls/hospital-ca.pem"))
        wait_for(lambda: requests.get("https://127.0.0.1:9443/jwks.json", verify=ca, timeout=3).status_code == 200,
                 "pacs-bridge-web /jwks.json over TLS", procs)
        log = root.local("/var/log/orthanc/Orthanc.log")
        wait_for(lambda: "Orthanc has started" in log.read_text(errors="replace") and port_open(4242), "orthanc",
                 procs)
        assert "pacs-bridge: plugin bundle" in log.read_text(errors="replace")
        # the REST helper the config unit built is loaded first and used (bridge/deploy/orthanc_rest_plugin.py)
        assert "REST calls through libPacsBridgeRest.so, without Python's lock" in log.read_text(errors="replace")
        assert "pacs-bridge: encrypted storage in" in log.read_text(errors="replace")  # the image store encrypted
        assert https_status(8042, "/system", ca) == 403
        assert not plain_http_answered(8042), "Orthanc answered plain HTTP"
        assert dicom_refused(4242, generated["DicomAet"], "INTRUDER")
        ct = generated["DicomModalities"]["ct-scanner"]
        assert dicom_refused(4242, generated["DicomAet"], ct["AET"]), "CT01 from another host than its own"
        add_loopback_address(ct["Host"])
        assert dicom_echo(4242, generated["DicomAet"], ct["AET"], ct["Host"]) == 0  # Orthanc's rule, not a dead port
        wait_for(lambda: port_open(9464), "pacs-bridge-serve metrics", procs, timeout=20)
        assert all(p.alive() for p in procs)
        assert root.local("/var/lib/pacs-bridge/bridge.db").exists(), "the store is under the root"
    finally:
        runner.stop()
