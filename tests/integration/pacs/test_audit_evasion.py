"""Audit evasion through DICOM data, end to end: studies whose PatientID is ``Basic 4711`` or a
JWT-looking value are uploaded to the real Orthanc and read with valid PACS tokens; the bridge
plugin ships the accesses to a real bridge (the Flask app over HTTPS, SQLite store, signed
checkpoints), where they must be in the trail with the value replaced by its redaction marker,
found by an auditor who searches for the original value, and the chain must still verify.

(Before the fix the plugin's shipper dropped such an event whole: the access left no trace.)
The tokens are signed by the bridge's own key ring (no Keycloak login needed for this path:
what is tested is the plugin -> ingest -> store path, not the login)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core.permissions import Permission as P
from bridge.deploy.orthanc_config import plugin_settings
from bridge.store.db import migrate
from bridge.tokens import claims as claims_mod
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import tls
from pacs_devstack.pacs_double import dicom_instance
from pacs_devstack.state import free_port
from tests.doubles import one_grant

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
BASIC_PID = "Basic 4711"
JWT_PID = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlX" + RUN[:4]
JWT_NAME = "eyJhbGciOiJIUzI1NiJ9.eyJuYW1lIjoiSiJ9.bmFtZXNpZ25h" + RUN[4:]
UID_ROOT = f"1.2.826.0.1.3680043.10.1137.88.{int(RUN, 16) % 10**9}"
STUDIES = {  # patient id -> (patient name, study uid)
    BASIC_PID: ("Doe^Basic", f"{UID_ROOT}.1"),
    JWT_PID: (JWT_NAME, f"{UID_ROOT}.2"),
}


def _serve_https(app: Any, port: int) -> Any:
    from werkzeug.serving import make_server

    pair = tls.issue("audit-evasion-bridge")
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=(str(pair.cert), str(pair.key)))
    threading.Thread(target=server.serve_forever, name="audit-evasion-bridge", daemon=True).start()
    return server


class Bridge:
    def __init__(self, app: Any, base: str, ca: str, env: dict[str, str]):
        self.app, self.base, self.ca, self.env = app, base, ca, env
        self.service = app.extensions["pacs_bridge_tokens"]["service"]
        self.store = app.extensions["pacs_bridge_audit_store"]

    def token(self, perms: set[P], username: str, roles: tuple[str, ...] = ("radiologist",)) -> str:
        now = int(time.time())
        body = claims_mod.build(
            self.service.settings,
            claims_mod.Subject(id=f"sub-{username}", username=username, auth_time=now - 5, amr=("pwd", "otp")),
            one_grant(roles, perms), "pacs-viewer", now=now)
        return str(self.service.ring.sign(body))


@pytest.fixture(scope="module")
def bridge(orthanc: dict[str, Any], stack: dict[str, Any],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    work = tmp_path_factory.mktemp("audit-evasion")
    ca = stack["ca"]["file"]
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    url = f"sqlite:///{work}/bridge.db"
    migrate(url)
    ingest = secrets.token_urlsafe(24)
    kek = KeyEncryptor.generate_secret()  # the CLI below signs checkpoints with the same key: same KEK
    settings = load_config(
        store={"url": url},
        tokens={"key_encryption_key": kek, "issuer": base,
                "clients": [{"client_id": "pacs-viewer"}]},
        audit={"spool_dir": str(work / "spool"), "checkpoint_key_file": str(work / "audit.key"),
               "archive_dir": str(work / "archive"), "checkpoint_every": 3, "ingest_token": ingest},
    )
    app = create_app(settings)
    server = _serve_https(app, port)
    config_file = Path(orthanc["plugin_config"])
    original = config_file.read_text()
    token_file = work / "ingest-token"
    token_file.write_text(ingest)
    token_file.chmod(0o600)
    cfg = plugin_settings(issuer=base, audience="pacs", ca_file=Path(ca), spool_dir=work / "plugin-spool",
                          orthanc_log_file=Path(orthanc["log"]), pacs_name="orthanc-evasion-test",
                          audit_url=base + "/audit/events", audit_token_file=token_file, mfa=settings.mfa)
    cfg.update({"audit_flush_seconds": 0.3, "reload_check_seconds": 0.5, "revocation_refresh_seconds": 1})
    config_file.write_text(json.dumps(cfg, indent=2))
    try:
        yield Bridge(app, base, ca, {"PACS_BRIDGE_STORE__URL": url,
                                     "PACS_BRIDGE_AUDIT__CHECKPOINT_KEY_FILE": str(work / "audit.key"),
                                     "PACS_BRIDGE_TOKENS__KEY_ENCRYPTION_KEY": kek})
    finally:
        config_file.write_text(original)
        # the plugin re-reads its configuration on an HTTP request: make one, so that what comes next
        # (DICOM associations, whose refusals the gate records, make none) is audited to the stack's bridge
        time.sleep(cfg["reload_check_seconds"] + 0.2)
        requests.get(orthanc["url"] + "/system", timeout=10, verify=orthanc["ca_file"])
        server.shutdown()


@pytest.fixture(scope="module")
def uploaded(bridge: Bridge, orthanc: dict[str, Any]) -> dict[str, str]:
    """Patient id -> Orthanc study id, uploaded through Orthanc with an upload token."""
    token = bridge.token({P.UPLOAD, P.VIEW}, "tech.evasion", ("technologist",))
    out: dict[str, str] = {}
    for pid, (name, study_uid) in STUDIES.items():
        data = dicom_instance(patient_id=pid, patient_name=name, study_uid=study_uid,
                              series_uid=study_uid + ".1", sop_uid=study_uid + ".1.1")
        deadline = time.monotonic() + 30
        while True:  # the plugin reloads its config on the next request after the file changed
            r = requests.post(orthanc["url"] + "/instances", data=data, timeout=15, verify=orthanc["ca_file"], headers={
                "Authorization": "Bearer " + token, "Content-Type": "application/dicom"})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 200, f"upload of {pid!r} answered {r.status_code}"
        out[pid] = r.json()["ParentStudy"]
    return out


def _wait_rows(bridge: Bridge, timeout: float = 15.0, **query: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in bridge.store.query(**query) if r["type"] == "study.accessed"]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


@pytest.mark.parametrize("pid", [BASIC_PID, JWT_PID])
def test_access_to_a_patient_with_a_credential_looking_id_is_in_the_trail(
    bridge: Bridge, orthanc: dict[str, Any], uploaded: dict[str, str], pid: str
) -> None:
    user = f"rad.evasion.{uuid.uuid4().hex[:6]}"
    token = bridge.token({P.VIEW}, user)
    for path in (f"/studies/{uploaded[pid]}", f"/studies/{uploaded[pid]}/series"):
        r = requests.get(orthanc["url"] + path, headers={"Authorization": "Bearer " + token}, timeout=15,
                         verify=orthanc["ca_file"])
        assert r.status_code == 200, (path, r.status_code)
    rows = [r for r in _wait_rows(bridge, patient=pid) if r["actor_username"] == user]
    assert rows, f"the access to patient {pid!r} left no trace in the audit trail"
    row = rows[0]
    assert row["patient_id"] == ev.redaction_marker(pid)  # replaced, stable, searchable
    assert row["study_uid"] == STUDIES[pid][1]
    body = json.loads(row["body"])
    assert any(n.startswith("object patient.id: credential") for n in body["details"]["normalised"])
    assert sum(r_["details"]["requests"] for r_ in map(lambda x: json.loads(x["body"]), rows)) >= 2
    # the auditor's API finds it by the value they know, too
    auditor = bridge.token({P.AUDIT_LOGS}, "comp.evasion", ("compliance",))
    answer = requests.get(bridge.base + "/audit/events", params={"patient": pid, "type": "study.accessed"},
                          headers={"Authorization": "Bearer " + auditor}, verify=bridge.ca, timeout=15)
    assert answer.status_code == 200, answer.text
    assert {e["event_id"] for e in answer.json()["events"]} >= {row["event_id"]}


def _cli(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    """``pacs-bridge ARGS`` as an auditor runs it, in its own process, on the bridge's database."""
    env = {**os.environ, **bridge.env}
    return subprocess.run([sys.executable, "-c", "from bridge.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_finds_the_accesses_by_the_original_value_and_verifies(
    bridge: Bridge, uploaded: dict[str, str]
) -> None:
    assert uploaded
    for pid in STUDIES:
        assert _wait_rows(bridge, patient=pid), f"no access to {pid!r} recorded yet"
        res = _cli(bridge, "audit", "query", "--patient", pid, "--type", "study.accessed", "--format", "json")
        assert res.returncode == 0, res.stderr
        found = json.loads(res.stdout)
        assert found and all(r["patient_id"] == ev.redaction_marker(pid) for r in found)
    res = _cli(bridge, "audit", "verify")
    assert res.returncode == 0 and "audit trail OK" in res.stdout, res.stdout + res.stderr


def test_no_credential_looking_value_is_stored_and_the_chain_verifies(bridge: Bridge, uploaded: dict[str, str]) -> None:
    assert uploaded
    from sqlalchemy import text

    with bridge.store.engine.connect() as conn:
        rows = "\n".join(json.dumps([str(v) for v in row]) for row in conn.execute(text("SELECT * FROM audit_events")))
    for value in (BASIC_PID, JWT_PID, JWT_NAME):
        assert value not in rows, f"{value!r} stored as it is"
    import xml.etree.ElementTree as ET

    from bridge.audit.chain import row_to_event
    from bridge.audit.dicom_xml import to_xml

    for r in bridge.store.query():  # what the collector would receive: well-formed, marker in place
        root = ET.fromstring(to_xml(row_to_event(r)).encode("utf-8"))
        assert root.tag == "AuditMessage"
    rejected = bridge.store.query(types=["audit.input_rejected"])
    assert not rejected, [r["body"] for r in rejected]  # the plugin sends only what the intake accepts
    rep = bridge.store.verify()
    assert rep.ok and rep.signatures_checked and rep.checkpoints >= 1, rep.message
