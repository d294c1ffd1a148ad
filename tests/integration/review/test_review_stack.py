"""Access review of the demo hospital on the real stack (Samba AD, Keycloak, the bridge under
the web server with its gateway, PostgreSQL, rsyslog), in the order a review cycle runs:

1. A Keycloak administrator of their own (not the bridge's `admin` account) gives `ref.dina` the
   privileged `pacs-admin` role by hand in the console; the admin and login events are pulled; a
   campaign starts (`pacs-bridge review run`).  It flags the disabled account (`rad.old.ray`),
   the hand-given console role, the SoD warn case (`rad.bruno`: radiologist + auditor) and
   dormant users; the department heads and the privacy officer are the reviewers.
2. The Radiology head (`rad.dana`) logs in with password + TOTP in Chromium, opens /review/ and
   revokes `tech.yara`'s technologist role with a comment; the next sync removes it from the
   bridge's store and Keycloak, and `sync --plan` shows the exception with its reason.
3. The deadline passes: the unanswered items escalate to the privacy officer: the alert reaches
   rsyslog (an ATNA message) and a local HTTPS webhook receiver, signed.

Users: `ref.dina` and `tech.yara`, whom no other test uses; both are restored at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from bridge.audit import jobs as audit_jobs
from bridge.audit.syslog import syslog_sender
from bridge.cli import main
from bridge.config import load_config
from bridge.kcadmin import admin_client, admin_from_settings
from bridge.review import campaign
from bridge.review.notify import SIGNATURE_HEADER, webhook
from bridge.services import Services
from bridge.store.db import session
from bridge.store.models import ReviewException, ReviewItem, RoleAssignment
from bridge.sync.factory import build_runner
from pacs_devstack import browser, tls
from pacs_devstack import keycloak as kc
from pacs_devstack.realm import AD_REALM
from pacs_devstack.service import StackContext
from pacs_devstack.state import free_port

pytestmark = pytest.mark.integration

HAND_USER, HAND_ROLE = "ref.dina", "pacs-admin"
REVOKED_USER, REVOKED_ROLE = "tech.yara", "technologist"
HEAD = "rad.dana"


def _need(stack: dict[str, Any]) -> None:
    for name in ("keycloak", "samba", "bridge", "orthanc", "rsyslog"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run")


@pytest.fixture(scope="module")
def env(stack: dict[str, Any], directory_ids: dict[str, dict[str, str]]) -> Iterator[dict[str, Any]]:
    _need(stack)
    settings = load_config(stack["bridge"]["config"])
    services = Services(settings)
    ca, url = stack["ca"]["file"], stack["keycloak"]["url"]
    admin_password = StackContext(ca_file=Path(ca)).secret(kc.ADMIN_SECRET)
    # a console administrator of their own (the bridge's sync logs in as `admin`)
    master = admin_client(url, "master", kc.ADMIN_USERNAME, admin_password, ca_file=ca)
    console_user, console_password = f"console-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    console_id = master.create_user({"username": console_user, "enabled": True, "credentials": [
        {"type": "password", "value": console_password, "temporary": False}]})
    master.assign_realm_roles(console_id, [master.get_realm_role("admin")])
    console = admin_client(url, AD_REALM, console_user, console_password, admin_realm="master", ca_file=ca)
    (dina,) = console.get_users({"username": HAND_USER, "exact": True})
    console.assign_realm_roles(dina["id"], [console.get_realm_role(HAND_ROLE)])
    audit_jobs.keycloak_admin_events(settings, services.audit_store)
    audit_jobs.keycloak_events(settings, services.audit_store)
    result = CliRunner().invoke(main, ["review", "run", "-c", stack["bridge"]["config"]])
    assert result.exit_code == 0, result.output
    camp = campaign.current(services.engine)
    assert camp is not None
    yield {"settings": settings, "services": services, "campaign": camp, "ids": directory_ids[AD_REALM],
           "output": result.output, "console": console, "dina": dina}
    # restore: the hand-given role (the sync may have taken it already), the revoked role
    try:
        console.delete_realm_roles_of_user(dina["id"], [console.get_realm_role(HAND_ROLE)])
    finally:
        master.delete_user(console_id)
    with session(services.engine) as s:
        s.execute(update(ReviewException).where(ReviewException.ended_at.is_(None))
                  .values(ended_at=dt.datetime.now(dt.UTC)))
    build_runner(settings).run(apply=True, full=True)


def _user(env: dict[str, Any], username: str) -> Any:
    (u,) = campaign.users_of(env["services"].engine, env["campaign"].id, [env["ids"][username]])
    return u


def _items(env: dict[str, Any]) -> list[ReviewItem]:
    return campaign.items_of(env["services"].engine, env["campaign"].id)


def test_the_review_flags_the_demo_hospitals_cases(env: dict[str, Any]) -> None:
    assert "disabled" in _user(env, "rad.old.ray").flags
    dina = _user(env, HAND_USER)
    assert "hand-assigned" in dina.flags and "privileged" in dina.flags
    hand = dina.evidence["hand-assigned"]
    assert HAND_ROLE in hand["roles"] or any(c["role"] == HAND_ROLE for c in hand["console_changes"])
    assert all(c["admin"] != kc.ADMIN_USERNAME for c in hand["console_changes"])
    bruno = _user(env, "rad.bruno")
    assert "sod" in bruno.flags and bruno.evidence["sod"][0]["action"] == "warn"
    assert "dormant" in _user(env, "ref.carl").flags  # never logged in, never used the PACS
    assert "privileged" in _user(env, "it.ivan").flags
    queues = {(i.username, i.role): i.queue for i in _items(env)}
    assert queues[(REVOKED_USER, REVOKED_ROLE)] == "radiology-head"
    assert queues[("card.jon", "cardiologist")] == "cardiology-head"
    assert queues[("card.ines", "cardiologist")] == "privacy-officer"  # the only Cardiology head: not herself
    assert "review campaign" in env["output"]


def test_a_reviewer_revokes_in_the_browser_and_the_next_sync_removes_it(env: dict[str, Any],
                                                                         stack: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    from tests.integration.gateway.gw_browser_helpers import log_in

    settings = env["settings"]
    bridge_url = stack["bridge"]["url"]
    item = next(i for i in _items(env) if (i.username, i.role) == (REVOKED_USER, REVOKED_ROLE))
    browser.ensure_installed()
    certs = [tls.issue(n).cert for n in ("keycloak", "bridge", "haproxy")]
    with browser.chromium(certs, tmp_path / "profile") as b:
        log_in(b, bridge_url + settings.gateway.prefix, HEAD)
        b.go(bridge_url + "/review/")
        assert b.wait_for(lambda: b.element(f"#submit-{item.id}") is not None), b.source()[:800]
        assert "tech.yara" in b.source() and "Roles per department" in b.source()
        b.click(f"#revoke-{item.id}")
        b.fill(f"#comment-{item.id}", "moved to the cath lab team; no radiology acquisition")
        b.click(f"#submit-{item.id}")
        assert b.wait_for(lambda: "status=decided" in b.url()), b.url()
        assert "Your decision was recorded" in b.source()
    with session(env["services"].engine) as s:
        row = s.get(ReviewItem, item.id)
        assert row.decision == "revoke" and row.decided_by_name == HEAD
    runner = build_runner(settings)
    plan = runner.run(apply=False, full=True).plan
    assert any(f"{REVOKED_USER} does not get {REVOKED_ROLE}" in w and "cath lab" in w for w in plan.warnings)
    assert runner.run(apply=True, full=True).status in ("ok", "partial")
    uid = env["ids"][REVOKED_USER]
    with session(env["services"].engine) as s:
        held = set(s.scalars(select(RoleAssignment.role).where(RoleAssignment.subject_id == uid)))
    assert REVOKED_ROLE not in held
    admin = admin_from_settings(settings.keycloak)
    (yara,) = admin.get_users({"username": REVOKED_USER, "exact": True})
    assert REVOKED_ROLE not in {r["name"] for r in admin.get_realm_roles_of_user(yara["id"])}
    # shown again on the next plan (an exception is applied on every run, with its reason)
    again = CliRunner().invoke(main, ["sync", "--plan", "--json", "-c", stack["bridge"]["config"]])
    out = json.loads(again.output)
    assert any(e["role"] == REVOKED_ROLE and "cath lab" in e["reason"] for e in out["plan"]["exceptions"])


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def test_an_unanswered_item_escalates_to_syslog_and_the_webhook(env: dict[str, Any], stack: dict[str, Any]) -> None:
    pair = tls.issue("review-webhook")
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = env["settings"].model_dump(mode="python")
        secret = secrets.token_urlsafe(24)
        settings = load_config(stack["bridge"]["config"], review={
            "webhook_url": f"https://127.0.0.1:{port}/hooks/review", "webhook_ca_file": stack["ca"]["file"],
            "webhook_secret": secret})
        assert data["review"]["webhook_url"] is None  # the stack's own configuration has none
        services = env["services"]
        camp = env["campaign"]
        open_items = [i for i in _items(env) if i.decision is None]
        n = campaign.escalate(services.engine, audit=services.audit_store, notify=webhook(settings),
                              now=camp.deadline + dt.timedelta(seconds=1))
        assert n == len(open_items) > 0
        (headers, body), = _Receiver.got
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
        payload = json.loads(body)
        assert payload["count"] == n and payload["escalated_to"] == "privacy-officer"
        (row,) = services.audit_store.query(types=["review.escalated"], newest_first=True, limit=1)
        # the escalation is an audit event: shipped to the collector as an ATNA security alert
        audit_jobs.ship(services.audit_store, syslog_sender(settings))
        received = Path(stack["rsyslog"]["received_file"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and row["event_id"] not in received.read_text(errors="replace"):
            time.sleep(0.3)
        line = next(x for x in received.read_text(errors="replace").splitlines() if row["event_id"] in x)
        assert "review.escalated" in line and "110113" in line
        # the privacy officer may now decide an item of another queue
        mila = env["ids"]["comp.mila"]
        escalated = campaign.visible_items(services.engine, camp.id, mila)
        others = {i.id for i in open_items if i.subject_id != mila}  # never her own items
        assert others and others <= {i.id for i in escalated}
        assert not any(i.subject_id == mila for i in escalated)
    finally:
        server.shutdown()
