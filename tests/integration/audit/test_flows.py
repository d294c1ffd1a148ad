"""Each audit event family comes from the real flow that causes it, through one real bridge.

One bridge (the Flask app over HTTPS on loopback, SQLite store, signed checkpoints, syslog spool to
the dev stack's rsyslog) sees, in this order: a sync against Samba AD (roles from the example
policy), logins through the real Keycloak exchanged for PACS tokens (MFA) or refused (password
only), a study uploaded and read through the real Orthanc whose bridge plugin ships its events to
the bridge's ingest endpoint, and an auditor's query.  Then the spool is shipped to the collector.
The tests check the recorded events, the delivery (each record exactly once) and that no
password, OTP, secret or token appears in any record or syslog message.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text

from bridge.audit import jobs
from bridge.audit.syslog import syslog_sender
from bridge.config import load_config
from bridge.deploy.orthanc_config import plugin_settings
from bridge.store.db import migrate
from bridge.sync.factory import build_runner
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import demo_data, tls
from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
from pacs_devstack.pacs_double import dicom_instance
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext
from pacs_devstack.state import free_port

pytestmark = pytest.mark.integration

POLICY = Path(__file__).parents[3] / "examples" / "policy.yaml"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
REDIRECTS = {"pacs-viewer": "https://127.0.0.1:9443/viewer/oidc/callback",
             "pacs-bridge": "https://127.0.0.1:8443/oidc/callback"}
STUDY_UID = f"1.2.826.0.1.3680043.10.1137.77.{uuid.uuid4().int % 10**12}"
PATIENT = f"P-AUD-{uuid.uuid4().hex[:6]}"


class World:
    """What the flows produced, and every secret that went through them."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.otps: list[str] = []
        self.tokens: dict[str, str] = {}
        self.orthanc_error: str | None = None
        self.auditor_answer: Any = None
        self.non_auditor_status: int | None = None

    def secret(self, name: str, value: str | None) -> str | None:
        if value:
            self.secrets[name] = value
        return value


def _serve_https(app: Any, port: int) -> Any:
    from werkzeug.serving import make_server

    pair = tls.issue("audit-test-bridge")
    server = make_server("127.0.0.1", port, app, threaded=True,
                         ssl_context=(str(pair.cert), str(pair.key)))
    threading.Thread(target=server.serve_forever, name="audit-test-bridge", daemon=True).start()
    return server


def _login(world: World, ca: str, kc_url: str, client_id: str, username: str, *, mfa: bool = True) -> Any:
    secret = world.secret("keycloak client secret", StackContext(ca_file=Path(ca)).secret(kc.CLIENT_SECRET)) \
        if client_id == "pacs-bridge" else None
    helper = BrowserlessLogin(kc_url, AD_REALM, client_id, REDIRECTS[client_id], ca_file=ca, client_secret=secret)
    user = demo_data.user(username)
    world.secret(f"password of {username}", str(user["password"]))
    provider = fresh_totp(user["totp_secret"], f"{AD_REALM}/{username}")

    def otp() -> str:
        code = provider()
        world.otps.append(code)
        return code

    login = helper.login(username, str(user["password"]), otp=otp if mfa else None)
    world.secret(f"keycloak access token of {username}", login.access_token)
    world.secret(f"keycloak id token of {username}", login.id_token)
    world.secret(f"keycloak refresh token of {username}", login.tokens.get("refresh_token"))
    return login


def _exchange(base: str, ca: str, subject_token: str, client_id: str) -> requests.Response:
    return requests.post(base + "/token", verify=ca, timeout=20, data={
        "grant_type": EXCHANGE, "client_id": client_id, "subject_token": subject_token, "subject_token_type": AT})


def _orthanc_flow(world: World, stack: dict[str, Any], base: str, ca: str, work: Path) -> None:
    """Upload a study (technologist) and read it (radiologist) through Orthanc and the bridge plugin."""
    orthanc = stack["orthanc"]
    config_file = Path(orthanc["plugin_config"])
    original = config_file.read_text()
    token_file = work / "ingest-token"
    token_file.write_text(world.secrets["ingest token"])
    token_file.chmod(0o600)
    cfg = plugin_settings(issuer=base, audience="pacs", ca_file=Path(ca), spool_dir=work / "plugin-spool",
                          orthanc_log_file=Path(orthanc["log"]), pacs_name="orthanc-audit-test",
                          audit_url=base + "/audit/events", audit_token_file=token_file)
    cfg.update({"audit_flush_seconds": 0.3, "reload_check_seconds": 0.5, "revocation_refresh_seconds": 1})
    config_file.write_text(json.dumps(cfg, indent=2))
    try:
        url, up, view = orthanc["url"], world.tokens["tech.uma"], world.tokens["rad.chen"]
        deadline = time.monotonic() + 30
        while True:  # the plugin reloads its config on the next request after the file changed
            r = requests.post(url + "/instances", timeout=15, verify=orthanc["ca_file"], headers={
                "Authorization": "Bearer " + up, "Content-Type": "application/dicom"},
                data=dicom_instance(patient_id=PATIENT, patient_name="Audit^Test", study_uid=STUDY_UID,
                                    series_uid=STUDY_UID + ".1", sop_uid=STUDY_UID + ".1.1"))
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if r.status_code != 200:
            world.orthanc_error = f"upload through Orthanc answered {r.status_code}"
            return
        study_id = r.json()["ParentStudy"]
        r = requests.get(f"{url}/studies/{study_id}", headers={"Authorization": "Bearer " + view}, timeout=15,
                         verify=orthanc["ca_file"])
        if r.status_code != 200:
            world.orthanc_error = f"reading the study through Orthanc answered {r.status_code}"
        time.sleep(2)  # > audit_flush_seconds: the plugin has shipped to the bridge
    finally:
        config_file.write_text(original)


@pytest.fixture(scope="module")
def world(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Any, Any]]:
    for name in ("keycloak", "samba", "rsyslog"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run")
    w = World()
    work = tmp_path_factory.mktemp("audit-flows")
    ca = stack["ca"]["file"]
    ctx = StackContext(ca_file=Path(ca))
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    url = f"sqlite:///{work}/bridge.db"
    migrate(url)
    samba, rs = stack["samba"], stack["rsyslog"]
    settings = load_config(
        keycloak={"url": stack["keycloak"]["url"], "realm": AD_REALM, "ca_file": ca},
        store={"url": url},
        tokens={"key_encryption_key": w.secret("key encryption key", KeyEncryptor.generate_secret()),
                "issuer": base, "clients": [{"client_id": "pacs-viewer"}, {"client_id": "pacs-bridge"}]},
        directory={"kind": "ad", "url": samba["ldaps_url"], "bind_dn": samba["bind_dn"],
                   "bind_password": w.secret("directory bind password", ctx.secret(samba["bind_password_secret"])),
                   "base_dn": samba["base_dn"], "users_dn": samba["users_dn"], "groups_dn": samba["groups_dn"],
                   "ca_file": ca},
        sync={"policy_file": str(POLICY), "targets": ["store"]},
        audit={"syslog_host": rs["host"], "syslog_port": int(rs["port"]), "syslog_ca_file": ca,
               "syslog_client_cert_file": rs["client_cert_file"], "syslog_client_key_file": rs["client_key_file"],
               "spool_dir": str(work / "spool"), "checkpoint_key_file": str(work / "audit.key"),
               "archive_dir": str(work / "archive"), "checkpoint_every": 25,
               "ingest_token": w.secret("ingest token", secrets.token_urlsafe(24))},
    )
    # 1. sync against the real directory: roles for everyone in the policy's groups
    report = build_runner(settings).run(apply=True, full=True)
    assert report.status in ("ok", "partial"), report.errors
    # 2. the bridge, over HTTPS
    app = create_app(settings)
    server = _serve_https(app, port)
    store = app.extensions["pacs_bridge_audit_store"]
    kc_url = stack["keycloak"]["url"]
    try:
        # 3. logins through Keycloak, exchanged for PACS tokens
        for username in ("rad.chen", "tech.uma", "comp.nils"):
            login = _login(w, ca, kc_url, "pacs-viewer", username)
            r = _exchange(base, ca, login.access_token, "pacs-viewer")
            assert r.status_code == 200, (username, r.text)
            w.tokens[username] = w.secret(f"PACS token of {username}", r.json()["access_token"])  # type: ignore[assignment]
        step_up = _login(w, ca, kc_url, "pacs-bridge", kc.NO_OTP_USER, mfa=False)
        assert _exchange(base, ca, step_up.access_token, "pacs-bridge").status_code == 401
        # 4. a request through the real Orthanc with the bridge plugin
        if "orthanc" in stack and "plugin_config" in stack["orthanc"]:
            _orthanc_flow(w, stack, base, ca, work)
        else:
            w.orthanc_error = "orthanc is not part of this dev stack run"
        # 5. the auditor asks; a radiologist may not
        w.auditor_answer = requests.get(base + "/audit/events", params={"type": "token.exchanged"}, verify=ca,
                                        headers={"Authorization": "Bearer " + w.tokens["comp.nils"]}, timeout=15)
        w.non_auditor_status = requests.get(base + "/audit/events", verify=ca, timeout=15, headers={
            "Authorization": "Bearer " + w.tokens["rad.chen"]}).status_code
        app.extensions["pacs_bridge_tokens"]["service"].audit.flush()  # the token events' buffer
        # 6. serve's jobs: timed checkpoint, shipping to the collector
        jobs.checkpoint(store)
        jobs.ship(store, syslog_sender(settings))
        yield w, store, settings
    finally:
        server.shutdown()


def _types(store: Any) -> list[str]:
    return [r["type"] for r in store.query()]


def test_sync_against_the_directory_is_audited(world):
    _, store, _ = world
    types = _types(store)
    assert "sync.started" in types and "sync.finished" in types
    assigned = [r for r in store.query(types=["role.assigned"]) if r["actor_username"] is None]
    assert assigned, "no role.assigned event"
    alice = [r for r in store.query(types=["role.assigned"]) if "rad.chen" in r["body"]]
    body = json.loads(alice[0]["body"])
    kinds = {o["kind"] for o in body["objects"]}
    assert {"user", "role", "group", "rule"} <= kinds, body  # the group and policy rule behind it


def test_login_and_exchange_through_keycloak_are_audited(world):
    _, store, _ = world
    exchanged = store.query(types=["token.exchanged"])
    assert {r["actor_username"] for r in exchanged} >= {"rad.chen", "tech.uma", "comp.nils"}
    assert all(r["actor_user"] and "@" in r["actor_user"] for r in exchanged)
    assert all(r["client_id"] == "pacs-viewer" for r in exchanged)
    refused = store.query(types=["login.mfa_failure"])
    assert refused and refused[-1]["outcome"] == 4


def test_a_request_through_orthanc_is_audited(world):
    w, store, _ = world
    if w.orthanc_error:
        pytest.fail(w.orthanc_error)
    deadline = time.monotonic() + 10
    while True:
        accessed = [r for r in store.query(study=STUDY_UID) if r["type"] == "study.accessed"]
        if accessed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert accessed, [r["type"] for r in store.query(study=STUDY_UID)]
    assert accessed[0]["actor_username"] == "rad.chen" and accessed[0]["patient_id"] == PATIENT
    # an upload names no study in its URL (the plugin records it without study objects)
    uploaded = store.query(types=["study.uploaded"], user="tech.uma")
    assert uploaded and json.loads(uploaded[0]["body"])["details"]["pacs"] == "orthanc-audit-test"


def test_auditor_query_needs_the_permission_and_is_itself_audited(world):
    w, store, _ = world
    assert w.non_auditor_status == 403
    answer = w.auditor_answer
    assert answer.status_code == 200, answer.text
    assert {e["actor_username"] for e in answer.json()["events"]} >= {"rad.chen", "comp.nils"}
    used = store.query(types=["audit.log_used"])
    assert used and used[-1]["actor_username"] == "comp.nils"
    denied = [r for r in store.query(types=["access.denied"]) if r["actor_username"] == "rad.chen"]
    assert denied


def test_chain_verifies_with_signed_checkpoints(world):
    _, store, _ = world
    rep = store.verify()
    assert rep.ok and rep.signatures_checked and rep.checkpoints >= 1, rep.message


def test_every_record_reaches_the_collector_exactly_once(world, stack):
    _, store, settings = world
    received = Path(stack["rsyslog"]["received_file"])
    ids = [r["event_id"] for r in store.query()]
    deadline = time.monotonic() + 15
    while True:
        text_ = received.read_text(encoding="utf-8", errors="replace")
        found = {i: text_.count(f'eventID="{i}"') for i in ids}
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert all(n == 1 for n in found.values()), {i: n for i, n in found.items() if n != 1}
    assert not list(Path(settings.audit.spool_dir).glob("*.msg"))


def test_no_password_otp_secret_or_token_in_any_record_or_message(world, stack):
    w, store, _ = world
    with store.engine.connect() as conn:
        rows = [json.dumps([str(v) for v in row]) for table in ("audit_events", "audit_checkpoints")
                for row in conn.execute(text(f"SELECT * FROM {table}"))]
    messages = Path(stack["rsyslog"]["received_file"]).read_text(encoding="utf-8", errors="replace")
    assert len(rows) > 10 and w.otps and len(w.tokens) == 3
    haystacks = {"audit records": "\n".join(rows), "syslog messages": messages}
    for where, hay in haystacks.items():
        for name, value in w.secrets.items():
            assert value not in hay, f"{name} found in the {where}"
        for code in set(w.otps):
            assert not re.search(rf"(?<![\d.]){code}(?!\d)", hay), f"TOTP code found in the {where}"
