"""Who viewed this patient: real accesses through Orthanc and the bridge plugin, then the report.

One bridge (the Flask app over HTTPS on loopback, SQLite store) gives PACS tokens to three
people who log in through the real Keycloak with MFA: a technologist uploads two studies of two
new patients through the real Orthanc, a radiologist views both and tries to delete the first
(refused: no delete permission), a cardiologist tries to view the first (refused: scoped to
Cardiology).  The plugin ships its events to the bridge.  The report for the first patient then
lists exactly the records of the trail that touch that patient or its study (allowed and
refused), each with who, when, what, the purpose of use (TREAT, the token's IHE IUA default)
and the address; the CLI gives the same list and its read is itself recorded.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner

from bridge.audit.patient_report import patient_report
from bridge.cli import main
from bridge.config import load_config
from bridge.deploy.orthanc_config import plugin_settings
from bridge.store.db import migrate
from bridge.sync.factory import build_runner
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import demo_data, tls
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
from pacs_devstack.pacs_double import dicom_instance
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext
from pacs_devstack.state import free_port

pytestmark = pytest.mark.integration

POLICY = Path(__file__).parents[3] / "examples" / "policy.yaml"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
REDIRECT = "https://127.0.0.1:9443/viewer/oidc/callback"
TECH, RAD, CARD = "tech.vic", "rad.dana", "card.liam"
RUN = uuid.uuid4().hex[:6]
PATIENT_A, PATIENT_B = f"P-GDPR-A-{RUN}", f"P-GDPR-B-{RUN}"
STUDY_A = f"1.2.826.0.1.3680043.10.1137.15.{uuid.uuid4().int % 10**12}"
STUDY_B = f"1.2.826.0.1.3680043.10.1137.16.{uuid.uuid4().int % 10**12}"


def _serve_https(app: Any, port: int) -> Any:
    from werkzeug.serving import make_server

    pair = tls.issue("patient-report-bridge")
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=(str(pair.cert), str(pair.key)))
    threading.Thread(target=server.serve_forever, name="patient-report-bridge", daemon=True).start()
    return server


def _pacs_token(base: str, ca: str, kc_url: str, username: str) -> str:
    user = demo_data.user(username)
    login = BrowserlessLogin(kc_url, AD_REALM, "pacs-viewer", REDIRECT, ca_file=ca).login(
        username, str(user["password"]), otp=fresh_totp(user["totp_secret"], f"{AD_REALM}/{username}"))
    r = requests.post(base + "/token", verify=ca, timeout=20, data={
        "grant_type": EXCHANGE, "client_id": "pacs-viewer", "subject_token": login.access_token,
        "subject_token_type": AT})
    assert r.status_code == 200, (username, r.text)
    return str(r.json()["access_token"])


def _upload(url: str, ca: str, token: str, patient: str, study: str) -> str:
    deadline = time.monotonic() + 30
    while True:  # the plugin reloads its config on the next request after the file changed
        r = requests.post(url + "/instances", timeout=15, verify=ca, headers={
            "Authorization": "Bearer " + token, "Content-Type": "application/dicom"},
            data=dicom_instance(patient_id=patient, patient_name="Report^Test", study_uid=study,
                                series_uid=study + ".1", sop_uid=study + ".1.1"))
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, f"upload through Orthanc answered {r.status_code}"
    return str(r.json()["ParentStudy"])


@pytest.fixture(scope="module")
def world(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    for name in ("keycloak", "samba", "orthanc"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run")
    if "plugin_config" not in stack["orthanc"]:
        pytest.skip("orthanc runs without the bridge plugin in this dev stack run")
    work = tmp_path_factory.mktemp("patient-report")
    ca, kc_url = stack["ca"]["file"], stack["keycloak"]["url"]
    ctx = StackContext(ca_file=Path(ca))
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    db_url = f"sqlite:///{work}/bridge.db"
    migrate(db_url)
    samba = stack["samba"]
    ingest = secrets.token_urlsafe(24)
    config: dict[str, Any] = {
        "keycloak": {"url": kc_url, "realm": AD_REALM, "ca_file": ca},
        "store": {"url": db_url},
        "tokens": {"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": base,
                   "clients": [{"client_id": "pacs-viewer"}]},
        "directory": {"kind": "ad", "url": samba["ldaps_url"], "bind_dn": samba["bind_dn"],
                      "bind_password": ctx.secret(samba["bind_password_secret"]), "base_dn": samba["base_dn"],
                      "users_dn": samba["users_dn"], "groups_dn": samba["groups_dn"], "ca_file": ca},
        "sync": {"policy_file": str(POLICY), "targets": ["store"]},
        "audit": {"spool_dir": str(work / "spool"), "checkpoint_key_file": str(work / "audit.key"),
                  "archive_dir": str(work / "archive"), "ingest_token": ingest},
    }
    settings = load_config(**config)
    report = build_runner(settings).run(apply=True, full=True)  # roles from the directory
    assert report.status in ("ok", "partial"), report.errors
    app = create_app(settings)
    server = _serve_https(app, port)
    store = app.extensions["pacs_bridge_audit_store"]
    orthanc = stack["orthanc"]
    config_file = Path(orthanc["plugin_config"])
    original = config_file.read_text()
    token_file = work / "ingest-token"
    token_file.write_text(ingest)
    token_file.chmod(0o600)
    cfg = plugin_settings(issuer=base, audience="pacs", ca_file=Path(ca), spool_dir=work / "plugin-spool",
                          orthanc_log_file=Path(orthanc["log"]), pacs_name="orthanc-patient-report",
                          audit_url=base + "/audit/events", audit_token_file=token_file)
    cfg.update({"audit_flush_seconds": 0.3, "reload_check_seconds": 0.5, "revocation_refresh_seconds": 1})
    statuses: dict[str, int] = {}
    try:
        tokens = {u: _pacs_token(base, ca, kc_url, u) for u in (TECH, RAD, CARD)}
        config_file.write_text(json.dumps(cfg, indent=2))
        url = orthanc["url"]
        a = _upload(url, orthanc["ca_file"], tokens[TECH], PATIENT_A, STUDY_A)
        b = _upload(url, orthanc["ca_file"], tokens[TECH], PATIENT_B, STUDY_B)

        def call(name: str, method: str, path: str, user: str) -> None:
            r = requests.request(method, url + path, headers={"Authorization": "Bearer " + tokens[user]}, timeout=15,
                                 verify=orthanc["ca_file"])
            statuses[name] = r.status_code

        call("rad views A", "GET", f"/studies/{a}", RAD)
        call("rad views B", "GET", f"/studies/{b}", RAD)
        call("rad deletes A", "DELETE", f"/studies/{a}", RAD)
        call("card views A", "GET", f"/studies/{a}", CARD)
        deadline = time.monotonic() + 20  # the plugin ships every 0.3 s
        while time.monotonic() < deadline:
            if len(store.query(patient=PATIENT_A)) >= 3 and store.query(patient=PATIENT_B):
                break
            time.sleep(0.5)
        yield {"store": store, "statuses": statuses, "config": config, "work": work}
    finally:
        config_file.write_text(original)
        server.shutdown()


def _touching(store: Any, patient: str, study: str) -> list[str]:
    """The event ids of every record whose objects name the patient or the study (a plain scan)."""
    out = []
    for r in store.query():
        objects = json.loads(r["body"]).get("objects", [])
        if any((o["kind"], o["id"]) in {("patient", patient), ("study", study)} for o in objects) \
                and r["type"] != "audit.log_used":
            out.append(r["event_id"])
    return out


def test_the_accesses_were_made(world: dict[str, Any]) -> None:
    s = world["statuses"]
    assert s["rad views A"] == 200 and s["rad views B"] == 200
    assert s["rad deletes A"] == 403 and s["card views A"] == 403


def test_the_report_lists_exactly_the_accesses_to_the_patient(world: dict[str, Any]) -> None:
    store = world["store"]
    rep = patient_report(store, PATIENT_A)
    assert [a.event_id for a in rep.accesses] == _touching(store, PATIENT_A, STUDY_A)
    seen = {(a.type, a.username, a.allowed) for a in rep.accesses}
    assert {("study.accessed", RAD, True), ("access.denied", RAD, False), ("access.denied", CARD, False)} <= seen
    assert all(STUDY_B not in a.studies for a in rep.accesses)
    assert {a.username for a in rep.accesses} <= {TECH, RAD, CARD}
    for a in rep.accesses:
        assert a.time and a.user_id and "@" in a.user_id and a.network_address
        assert a.purpose_of_use == ("TREAT",), a  # the token's IHE IUA purpose of use, recorded by the plugin
    denied = next(a for a in rep.accesses if a.username == RAD and not a.allowed)
    assert denied.permission == "delete" and denied.method == "DELETE"
    other = patient_report(store, PATIENT_B)
    assert [a.event_id for a in other.accesses] == _touching(store, PATIENT_B, STUDY_B)
    assert not {a.event_id for a in other.accesses} & {a.event_id for a in rep.accesses}


def test_the_cli_gives_the_same_list_and_its_read_is_recorded(world: dict[str, Any]) -> None:
    store, work = world["store"], world["work"]
    config_file = work / "bridge.yaml"
    config_file.write_text(yaml.safe_dump(world["config"]))
    res = CliRunner().invoke(main, ["audit", "patient-report", PATIENT_A, "-c", str(config_file), "--format", "json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert [a["event_id"] for a in got["accesses"]] == [a.event_id for a in patient_report(store, PATIENT_A).accesses]
    used = [json.loads(r["body"])["details"] for r in store.query(types=["audit.log_used"])]
    assert any(d.get("action") == "patient-report" and d.get("patient") == PATIENT_A for d in used)
    assert store.verify().ok
