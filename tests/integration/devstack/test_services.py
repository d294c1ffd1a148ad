"""The dev stack's Orthanc, SCIM double, PostgreSQL and rsyslog: each up, reachable the way the
bridge will reach it, and guarded the way the bridge relies on; and `down` leaves none behind.

Run only these services with ``PACS_BRIDGE_DEVSTACK_ONLY=orthanc,scim,postgres,rsyslog pytest
tests/integration/devstack/test_services.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pacs_devstack.postgres import database_url
from pacs_devstack.service import StackContext

pytestmark = pytest.mark.integration

MINE = ("orthanc", "scim", "postgres", "rsyslog")


def _entry(stack: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in stack:
        pytest.skip(f"{name} is not part of this stack (PACS_BRIDGE_DEVSTACK_ONLY)")
    return stack[name]


def _secret(stack: dict[str, Any], name: str) -> str:
    return StackContext(ca_file=Path(stack["ca"]["file"])).secret(name)


# --- Orthanc -------------------------------------------------------------------------------------

def test_orthanc_answers_and_its_filter_denies(stack: dict[str, Any]) -> None:
    orthanc = _entry(stack, "orthanc")
    assert orthanc["url"].startswith("https://")
    resp = requests.get(f"{orthanc['url']}/system", timeout=5, verify=orthanc["ca_file"])
    # 403 with an empty body is the Python filter's "False" (without the plugin: 200 + JSON)
    assert resp.status_code == 403
    assert resp.content == b""
    resp = requests.get(f"{orthanc['url']}/dicom-web/studies", headers={"Authorization": "Bearer x"},
                        timeout=5, verify=orthanc["ca_file"])
    assert resp.status_code == 403


def test_orthanc_dicom_refuses_an_unknown_peer(stack: dict[str, Any]) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from pacs_devstack.orthanc import modality_tls

    orthanc = _entry(stack, "orthanc")
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    # a trusted modality certificate: the refusal is the AE title's, not the TLS handshake's
    assoc = ae.associate("127.0.0.1", orthanc["dicom_port"], ae_title=orthanc["aet"], tls_args=modality_tls())
    try:
        echoed = assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()
    assert not echoed, "Orthanc answered C-ECHO from an unconfigured AET"


# --- SCIM ----------------------------------------------------------------------------------------

def test_scim_needs_the_bearer_token(stack: dict[str, Any]) -> None:
    scim = _entry(stack, "scim")
    token, ca = _secret(stack, scim["bearer_token_secret"]), scim["ca_file"]
    spc = requests.get(f"{scim['url']}/ServiceProviderConfig",
                       headers={"Authorization": f"Bearer {token}"}, timeout=5, verify=ca)
    assert spc.status_code == 200
    assert any(s["type"] == "oauthbearertoken" for s in spc.json()["authenticationSchemes"])
    assert requests.get(f"{scim['url']}/Users", headers={"Authorization": f"Bearer {token}"},
                        timeout=5, verify=ca).status_code == 200
    assert requests.get(f"{scim['url']}/Users", timeout=5, verify=ca).status_code == 401
    assert requests.get(f"{scim['url']}/Users", headers={"Authorization": "Bearer not-the-token"},
                        timeout=5, verify=ca).status_code == 401


def test_scim_is_https_only(stack: dict[str, Any]) -> None:
    """The SCIM double speaks TLS with the dev CA's certificate: plain HTTP gets no answer, an
    unknown CA is refused, and the bridge's configuration takes its URL without allow_plaintext."""
    from bridge.config import load_config

    scim = _entry(stack, "scim")
    assert scim["url"].startswith("https://")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(scim["url"].replace("https://", "http://") + "/ServiceProviderConfig", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{scim['url']}/ServiceProviderConfig", timeout=5)  # system CAs only
    assert load_config(scim={"url": scim["url"], "ca_file": scim["ca_file"]}).scim.url == scim["url"]
    # the resource locations it writes name the https URL
    token = _secret(stack, scim["bearer_token_secret"])
    spc = requests.get(f"{scim['url']}/ServiceProviderConfig", headers={"Authorization": f"Bearer {token}"},
                       timeout=5, verify=scim["ca_file"]).json()
    assert "http://" not in str(spc.get("meta", {}).get("location", ""))


# --- PostgreSQL ----------------------------------------------------------------------------------

def test_postgres_tls_verified_against_the_ca(stack: dict[str, Any]) -> None:
    pg = _entry(stack, "postgres")
    assert _secret(stack, pg["password_secret"]) not in json.dumps(stack)  # no secret in stack.json
    engine = sa.create_engine(database_url(stack))
    try:
        with engine.connect() as conn:
            ssl_on, user = conn.execute(sa.text(
                "SELECT s.ssl, current_user FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")).one()
    finally:
        engine.dispose()
    assert ssl_on is True
    assert user == "bridge"


def _connect(url: sa.engine.URL) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def test_postgres_refuses_a_wrong_password_and_plaintext(stack: dict[str, Any]) -> None:
    _entry(stack, "postgres")
    url = make_url(database_url(stack))
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        _connect(url.set(password="wrong-" + uuid.uuid4().hex))
    with pytest.raises(sa.exc.OperationalError, match=r"no encryption|pg_hba\.conf"):
        _connect(url.update_query_dict({"sslmode": "disable"}))


# --- rsyslog -------------------------------------------------------------------------------------

def _send_syslog_tls(host: str, port: int, ca_file: str, message: bytes, client: tuple[str, str]) -> None:
    """A minimal RFC 5425 sender: TLS verified against the CA, a client certificate, octet-counted framing."""
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(*client)
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"%d " % len(message) + message)
        conn.setblocking(False)
        with contextlib.suppress(ssl.SSLWantReadError):
            conn.unwrap()


def test_rsyslog_receives_rfc5424_over_tls(stack: dict[str, Any]) -> None:
    rs = _entry(stack, "rsyslog")
    marker = uuid.uuid4().hex
    xml = ('<?xml version="1.0"?><AuditMessage>'
           f'<EventIdentification EventActionCode="E" id="{marker}"/></AuditMessage>')
    message = (f"<85>1 2026-01-01T00:00:00.000Z bridge.test pacs-sso-bridge 4242 IHE+RFC-3881 "
               f'[meta@32473 test="{marker}"] \ufeff{xml}').encode()
    _send_syslog_tls(rs["host"], rs["port"], rs["ca_file"], message, (rs["client_cert_file"], rs["client_key_file"]))
    received = Path(rs["received_file"])
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [ln for ln in received.read_text(encoding="utf-8").splitlines() if marker in ln]
        if lines:
            break
        time.sleep(0.1)
    assert lines, f"message {marker} not in {received}"
    assert " IHE+RFC-3881 " in lines[0]  # MSGID kept
    assert xml in lines[0]  # the whole XML body kept


# --- down ----------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(proc.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_down_leaves_none_of_these_processes() -> None:
    """A second, private set of these four services (own state dir, free ports): up, then down."""
    # a world-traversable directory: PostgreSQL runs as `postgres` and must reach its data dir
    state = Path(tempfile.mkdtemp(prefix="ds-svc-down-", dir="/tmp"))
    state.chmod(0o755)
    env = {**os.environ, "PACS_BRIDGE_DEVSTACK_DIR": str(state)}
    cli = [str(Path(sys.executable).parent / "pacs-bridge"), "devstack"]
    only = [arg for name in MINE for arg in ("--only", name)]
    up = subprocess.run([*cli, "up", *only, "--owner", "test"], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        pids = []
        for name in MINE:
            record = json.loads((state / name / "process.json").read_text())
            pids.append(record["pid"])
            pids += _children(record["pid"])  # PostgreSQL's backends sit in their own sessions
        assert len(pids) > len(MINE), "expected PostgreSQL's auxiliary processes"
        assert all(_alive(p) for p in pids)
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if _alive(p)] == []
    assert not any((state / name / "process.json").exists() for name in MINE)
