"""The token service as the app builds it (SQLite store), two instances over one database standing
for two web server workers: what one worker learns (a removed role, a logout) counts in the other at
once -- no cache, no per-process memory in between."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete
from test_service_http import KC_ISS, KC_JWK, exchange, kc_token

from bridge.config import load_config
from bridge.core.audit_codes import AuditEventType
from bridge.store.db import engine, migrate, session
from bridge.store.models import RoleAssignment
from bridge.tokens.keys import KeyEncryptor
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator
from bridge.web.app import create_app
from bridge.web.tokens import build_service


def worker(settings: Any) -> dict[str, Any]:
    """One 'worker': its own service (caches, pools) over the shared database."""
    events: list[tuple[AuditEventType, dict]] = []
    service = build_service(settings)
    service.keycloak = KeycloakTokenValidator(  # the Keycloak double instead of the realm's JWKS URL
        KeycloakSettings(KC_ISS, "pacs-bridge", frozenset({"pacs-viewer"})),
        fetch=lambda url, body, headers: json.dumps({"keys": [KC_JWK]}).encode(),
    )
    inner = service.audit
    service.audit = lambda kind, details: (events.append((kind, dict(details))), inner(kind, details))[-1]
    app = create_app(settings, token_service=service, config={"PACS_BRIDGE_RATE_TOKEN": "1000/second"})
    return {"client": app.test_client(), "service": service, "events": events}


@pytest.fixture
def workers(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    with session(engine(url)) as s:
        s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="radiologist",
                             scopes={"departments": ["Cardiology"]}))
    settings = load_config(
        store={"url": url},
        # the audit key and spool in the test's directory, not the default var/ of the checkout
        audit={"checkpoint_key_file": str(tmp_path / "cp.key"), "spool_dir": str(tmp_path / "spool")},
        keycloak={"url": "https://kc.test", "realm": "hospital"},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": "https://127.0.0.1:9443",
                "clients": [{"client_id": "pacs-viewer"}]},
    )
    return worker(settings), worker(settings), url


def test_removed_role_is_not_granted_by_the_very_next_exchange(workers: Any) -> None:
    a, b, url = workers
    token = kc_token()
    assert exchange(a["client"], token).json["scope"]
    assert exchange(b["client"], token).status_code == 200  # both workers have read the assignment
    with session(engine(url)) as s:  # the sync (another process) removes the role
        s.execute(delete(RoleAssignment).where(RoleAssignment.subject_id == "guid-alice"))
    for w in (a, b):
        r = exchange(w["client"], kc_token())
        assert r.status_code == 400 and r.json["error"] == "invalid_grant"
        assert "no PACS role assignment" in w["events"][-1][1]["reason"]


def test_logout_in_one_worker_refuses_the_exchange_in_the_other(workers: Any) -> None:
    a, b, _url = workers
    before = kc_token(iat=int(time.time()) - 5)
    assert exchange(b["client"], before).status_code == 200  # b has loaded its revocation caches
    a["service"].revoke_subject("guid-alice", "logout")
    r = exchange(b["client"], before)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    assert "watermark" in b["events"][-1][1]["reason"]


def test_ended_session_in_one_worker_refuses_the_exchange_in_the_other(workers: Any) -> None:
    a, b, _url = workers
    token = kc_token(sid="kc-session-7")
    assert exchange(b["client"], token).status_code == 200
    a["service"].ended_sessions.end("kc-session-7")
    assert exchange(b["client"], token).status_code == 400


def test_an_exchange_reads_the_store_over_one_connection(workers: Any) -> None:
    """Assignments, watermark and ended session: three uncached reads, one pool checkout."""
    from sqlalchemy import event

    a, _b, _url = workers
    exchange(a["client"], kc_token(sid="s"))  # warm: keys, JWKS
    eng = a["service"].assignments.engine

    checkouts: list[int] = []
    # this thread's checkouts only: the audit sink's flush thread shares the engine and may
    # check out a connection of its own at any moment (that is not the exchange's read)
    me = threading.get_ident()
    listener = lambda *args: checkouts.append(1) if threading.get_ident() == me else None  # noqa: E731
    event.listen(eng, "checkout", listener)
    try:
        assert exchange(a["client"], kc_token(sid="s")).status_code == 200
    finally:
        event.remove(eng, "checkout", listener)
    assert len(checkouts) == 1


def test_local_account_does_not_inherit_a_directory_users_roles_by_username(workers: Any) -> None:
    """A local Keycloak account named like a directory user gets only hand-made rows by username."""
    a, _b, url = workers
    local = kc_token(directory_id=None, sub="kc-local-9", preferred_username="rad.alice",
                     realm_access={"roles": []})
    r = exchange(a["client"], local)  # rad.alice's sync row (managed) is not this account's
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    with session(engine(url)) as s:
        s.add(RoleAssignment(subject_id="", username="rad.alice", role="auditor", managed=False))
    r = exchange(a["client"], local)
    assert r.status_code == 200 and r.json["scope"] == "pacs:audit-logs"
