"""docker-compose.yml runs: its bridge-init, orthanc-config, bridge-web, bridge-serve and orthanc
services, started as local processes with their own command, environment and file layout (every
mount target mapped under a temporary root; parity.py), give a web app answering /jwks.json over
TLS, and an Orthanc that loads the plugin bundle and refuses a token-less request and a DICOM
association from an unknown AE; `check-config` accepts the configuration compose produces.

The postgres service runs too: Debian's PostgreSQL 15 (the image's major version) with compose's
command line, its pg_hba.conf and its init script (deploy/postgres/init-databases.sh), on port 5432
like the container.  What cannot be mapped is the host name ``postgres``: there is no resolver for
it here, so the bridge's store URL (otherwise compose's own: user, database, ``verify-full``
against a certificate for ``postgres``, the passfile) gains ``hostaddr=127.0.0.1``; libpq still
verifies the certificate and looks up the passfile under the name ``postgres``.  The image's
entrypoint is replaced by what it does (initdb with the superuser password file, then the init
script).  Keycloak, the directory and the ATNA collector are not started (not needed for these assertions;
the scheduler logs its failed sync and keeps running, as it would while they come up).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
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
    interpolate,
    loopback_modalities,
    place,
    plain_http_answered,
    port_open,
    site_files,
    wait_for,
)

pytestmark = pytest.mark.integration

RUN = ("postgres", "bridge-init", "orthanc-config", "bridge-web", "bridge-serve", "orthanc")


def _interp(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interp(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interp(v, env) for k, v in node.items()}
    return node


def _dockerfile(path: Path) -> dict[str, Any]:
    """What the compose file leaves to the images: ENTRYPOINT, WORKDIR, and COPY --from targets
    (paths the image itself owns, like the plugin bundle)."""
    text = path.read_text()
    out: dict[str, Any] = {"entrypoint": [], "workdir": "/", "owned": [], "bundle_cmd": None, "copies": {},
                           "env": {}}
    for line in text.splitlines():
        if line.startswith("ENTRYPOINT "):
            out["entrypoint"] = json.loads(line.split(" ", 1)[1])
        elif line.startswith("WORKDIR "):
            out["workdir"] = line.split(" ", 1)[1].strip()
        elif line.startswith("ENV "):
            key, _, value = line.split(" ", 1)[1].strip().partition("=")
            out["env"][key] = value
        elif line.startswith("COPY --from="):
            out["owned"].append(line.split()[-1])
            out["copies"][line.split()[-2]] = line.split()[-1]  # build-stage path -> image path
    for name, pattern in (("bundle_cmd", r"pacs-bridge plugin bundle (\S+)"),
                          ("shim_cmd", r"pacs-bridge plugin civetweb-tls-shim (\S+)")):
        m = re.search(pattern, text)
        out[name] = m.group(1) if m else None
    return out


@pytest.fixture
def deployment():  # type: ignore[no-untyped-def]
    from pacs_devstack.tls import ensure_ca

    ensure_packages("postgresql-15")
    # PostgreSQL runs as its own user: a root it can traverse (pytest's tmp_path is root-only)
    tmp_path = Path(tempfile.mkdtemp(prefix="deploy-parity-"))
    tmp_path.chmod(0o755)
    ca = ensure_ca()
    site = tmp_path / "site"
    site_files(site, ca)
    env = {"HOSPITAL_CA": str(ca), "KC_HOSTNAME": "https://127.0.0.1:8443",
           "PACS_BRIDGE_URL": "https://127.0.0.1:9443", "PACS_DIR_URL": "ldaps://127.0.0.1:6360",
           "PACS_DIR_BIND_DN": "CN=svc-pacs-bridge,OU=Service Accounts,DC=hospital,DC=example",
           "AUDIT_SYSLOG_HOST": "127.0.0.1", "PACS_BRIDGE_POLICY": "./examples/policy.yaml"}
    compose = _interp(yaml.safe_load((REPO / "docker-compose.yml").read_text()), env)
    root = Root(tmp_path / "root")
    root.path.mkdir()
    runner = Runner(tmp_path / "logs")
    try:
        yield compose, root, runner, site
    finally:
        runner.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)


def _source(src: str, site: Path) -> Path:
    """A bind source: relative to the compose file (the repository), else a site file."""
    p = Path(src)
    if p.is_absolute():
        return p
    return REPO / p if (REPO / p).exists() else site / p


def _layout(compose: dict[str, Any], root: Root, site: Path) -> None:
    """Every service's mounts, secrets and tmpfs under the root (named volumes: one directory per
    target, shared by every service mounting it there)."""
    for name in RUN:
        svc = compose["services"][name]
        for vol in svc.get("volumes", []):
            if isinstance(vol, dict):
                src, dst, kind = vol["source"], vol["target"], vol["type"]
            else:
                src, dst = vol.split(":")[:2]
                kind = "bind" if src.startswith((".", "/")) else "volume"
            local = root.own(dst)
            if kind == "bind":
                place(_source(src, site), local)
                if local.name == "bridge.yaml":
                    loopback_modalities(local)
            else:
                local.mkdir(parents=True, exist_ok=True)
        for secret in svc.get("secrets", []):
            place(_source(compose["secrets"][secret]["file"], site), root.own(f"/run/secrets/{secret}"))
        for t in svc.get("tmpfs", []):
            root.own(t).mkdir(parents=True, exist_ok=True)


def _process(compose: dict[str, Any], name: str, root: Root) -> tuple[list[str], dict[str, str], Path]:
    """argv, environment and working directory of one service, paths mapped."""
    svc = compose["services"][name]
    image = _dockerfile(REPO / (svc["build"]["dockerfile"] if isinstance(svc["build"], dict) else "Dockerfile"))
    argv = [root.map(a) for a in [*svc.get("entrypoint", image["entrypoint"]), *svc["command"]]]
    env = base_env(root.local("/var/lib/pacs-bridge"))
    env.update({k: root.map(str(v)) for k, v in image["env"].items()})  # the image's ENV, then compose's
    env.update({k: root.map(str(v)) for k, v in svc.get("environment", {}).items()})
    if "PACS_BRIDGE_STORE__URL" in env:
        url = env["PACS_BRIDGE_STORE__URL"]
        assert "@postgres:5432/bridge?" in url and "sslmode=verify-full" in url, url
        env["PACS_BRIDGE_STORE__URL"] = url + "&hostaddr=127.0.0.1"  # the one thing not mapped: DNS
    cwd = root.local(image["workdir"])
    cwd.mkdir(parents=True, exist_ok=True)
    return argv, env, cwd


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(argv: list[str]) -> list[str]:
    """As the image does: the server (and initdb) as the postgres user, never root."""
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def _postgres(compose: dict[str, Any], root: Root, runner: Runner) -> None:
    """The postgres service: the image's entrypoint steps with compose's command and files."""
    svc = compose["services"]["postgres"]
    pg = pwd.getpwnam("postgres")
    for path in [root.local("/etc/postgresql"), root.local("/var/lib/postgresql"), root.local("/run/secrets")]:
        for p in [path, *path.rglob("*")]:
            os.chown(p, pg.pw_uid, pg.pw_gid)
    root.local("/etc/postgresql/tls/key.pem").chmod(0o600)
    data = root.local("/var/lib/postgresql/data")
    data.chmod(0o700)
    sock = root.own("/var/run/postgresql")
    sock.mkdir(parents=True, exist_ok=True)
    os.chown(sock, pg.pw_uid, pg.pw_gid)
    env = base_env(root.path)
    env.update({k: root.map(str(v)) for k, v in svc["environment"].items()})
    runner.run("postgres initdb", _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                                f"--pwfile={env['POSTGRES_PASSWORD_FILE']}",
                                                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]), env, root.path)
    argv = [root.map(a) for a in svc["command"]]
    assert argv[0] == "postgres"
    argv = _as_postgres([str(PG_BIN / "postgres"), *argv[1:], "-D", str(data), "-c",
                         f"unix_socket_directories={sock}", "-c", "listen_addresses=127.0.0.1"])
    proc = runner.start("postgres", argv, env, root.path)
    wait_for(lambda: port_open(5432), "postgres", [proc], timeout=30)
    init = root.local("/docker-entrypoint-initdb.d/10-databases.sh")
    script = root.map(init.read_text())  # its /run/secrets paths, mapped like every other
    init.write_text(script)
    superuser = Path(env["POSTGRES_PASSWORD_FILE"]).read_text().strip()
    runner.run("postgres init scripts", ["bash", str(init)],
               {**env, "POSTGRES_USER": "postgres", "PGHOST": str(sock), "PGPASSWORD": superuser}, root.path)


def _pg_connect(user: str, database: str, root: Root, **extra: str) -> Any:
    import psycopg2

    ca = str(root.local("/etc/pacs-bridge/tls/hospital-ca.pem"))
    params = {"host": "postgres", "hostaddr": "127.0.0.1", "port": 5432, "user": user, "dbname": database,
              "sslmode": "verify-full", "sslrootcert": ca, "connect_timeout": 5, **extra}
    return psycopg2.connect(**params)


def test_compose_services_run_as_processes(deployment) -> None:  # type: ignore[no-untyped-def]
    compose, root, runner, site = deployment
    assert set(RUN) <= set(compose["services"]), "compose lost a service the deployment needs"

    # the Orthanc image: Debian's packages (the ones on this host) and the bundle its build writes
    orthanc_image = _dockerfile(REPO / "deploy/orthanc/Dockerfile")
    assert orthanc_image["bundle_cmd"] and orthanc_image["shim_cmd"], "the image builds the bundle and the shim"
    bundle_in_image = orthanc_image["copies"][orthanc_image["bundle_cmd"]]
    shim_in_image = orthanc_image["copies"][orthanc_image["shim_cmd"]]
    root.own(bundle_in_image)
    root.own(shim_in_image)
    runner.run("orthanc image build", ["pacs-bridge", "plugin", "bundle", str(root.local(bundle_in_image))],
               base_env(root.path), cwd=root.path)
    runner.run("orthanc image build (shim)",
               ["pacs-bridge", "plugin", "civetweb-tls-shim", str(root.local(shim_in_image))],
               base_env(root.path), cwd=root.path)
    assert orthanc_image["env"].get("LD_LIBRARY_PATH") == shim_in_image, "Orthanc must load the shim"
    # the orthanc user owns its data directory in the image
    root.own("/var/lib/orthanc/pacs-bridge").mkdir(parents=True, exist_ok=True)
    _layout(compose, root, site)
    _postgres(compose, root, runner)

    # one database and one user each, TLS only (pg_hba.conf), the passwords from the secret files
    import psycopg2

    bridge_pass = str(root.local("/run/secrets/bridge_db_pgpass"))
    kc_password = root.local("/run/secrets/keycloak_db_password").read_text().strip()
    _pg_connect("bridge", "bridge", root, passfile=bridge_pass).close()
    _pg_connect("keycloak", "keycloak", root, password=kc_password).close()
    for user, database, creds in (("bridge", "keycloak", {"passfile": bridge_pass}),
                                  ("keycloak", "bridge", {"password": kc_password})):
        with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):
            _pg_connect(user, database, root, **creds)
    with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):
        _pg_connect("bridge", "bridge", root, passfile=bridge_pass, sslmode="disable")

    # the configuration compose produces is accepted
    _argv, env, cwd = _process(compose, "bridge-web", root)
    out = runner.run("check-config", ["pacs-bridge", "check-config", env["PACS_BRIDGE_CONFIG"]], env, cwd)
    assert ": OK" in out

    for name in ("bridge-init", "orthanc-config"):
        runner.run(name, *_process(compose, name, root))
    generated = json.loads(root.local("/etc/orthanc/pacs-bridge/orthanc.json").read_text())
    assert generated["PythonScript"] == str(root.local(bundle_in_image)) + "/pacs_bridge_plugin.py"
    assert generated["DicomAlwaysAllowEcho"] is False and generated["AuthenticationEnabled"] is False
    assert generated["SslEnabled"] is True and generated["DicomTlsEnabled"] is True

    procs = {name: runner.start(name, *_process(compose, name, root)) for name in ("bridge-web", "bridge-serve",
                                                                                    "orthanc")}
    ca = str(root.local("/etc/pacs-bridge/tls/hospital-ca.pem"))

    def jwks() -> bool:
        r = requests.get("https://127.0.0.1:9443/jwks.json", verify=ca, timeout=3)
        return r.status_code == 200 and isinstance(r.json().get("keys"), list)

    wait_for(jwks, "bridge-web /jwks.json over TLS", procs.values())
    with pytest.raises(requests.exceptions.SSLError):  # TLS only, with the site's certificate
        requests.get("https://127.0.0.1:9443/jwks.json", verify=True, timeout=3)

    log = procs["orthanc"]
    wait_for(lambda: "Orthanc has started" in log.text() and port_open(4242), "orthanc", procs.values())
    assert "pacs-bridge: plugin bundle" in log.text(), log.text()[-3000:]
    # the image's REST helper is loaded first and used (bridge/deploy/orthanc_rest_plugin.py: a deadlock)
    assert "REST calls through libPacsBridgeRest.so, without Python's lock" in log.text(), log.text()[-3000:]
    # the image store is encrypted, its KEK created at the first start in its own volume
    assert "pacs-bridge: encrypted storage in" in log.text(), log.text()[-3000:]
    assert root.local("/var/lib/orthanc/pacs-bridge-keys/storage-kek.json").exists()
    assert https_status(8042, "/system", ca) == 403  # no token
    forged = {"Authorization": "Bearer x.y.z"}
    assert https_status(8042, "/system", ca, headers=forged) in (401, 403)  # nor a forged one
    assert not plain_http_answered(8042), "Orthanc answered plain HTTP"
    assert dicom_refused(4242, generated["DicomAet"], "INTRUDER"), "unknown AE associated"
    # a configured AE title from another host than its own is refused too (DicomCheckModalityHost)
    assert dicom_refused(4242, generated["DicomAet"], "CT01"), "CT01 associated from 127.0.0.1"
    # ... and from its own host it is admitted (the refusals above are Orthanc's rules, not a dead port)
    ct = generated["DicomModalities"]["ct-scanner"]
    add_loopback_address(ct["Host"])
    assert dicom_echo(4242, generated["DicomAet"], ct["AET"], ct["Host"]) == 0
    assert dicom_refused(4242, generated["DicomAet"], "INTRUDER", ct["Host"]), "unknown AE from a modality host"
    assert dicom_refused(4242, "OTHERPACS", ct["AET"], ct["Host"]), "wrong called AET accepted"
    # other routes and methods without a token
    for method, path in (("HEAD", "/system"), ("GET", "/dicom-web/studies"), ("GET", "/app/explorer.html"),
                         ("GET", "/instances"), ("POST", "/tools/find"), ("GET", "//system"), ("GET", "/SYSTEM")):
        status = https_status(8042, path, ca, method)
        assert status == 403, f"{method} {path}: {status}"

    # the scheduler runs beside them (its sync fails without a directory; it keeps going)
    wait_for(lambda: port_open(9464), "bridge-serve metrics", procs.values(), timeout=20)
    assert procs["bridge-serve"].alive()
