"""GET /audit/events (auditor access) and POST /audit/events (the Orthanc plugin's ingest)."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pytest

from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore
from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.core.permissions import Permission as P
from bridge.store import db
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import TokenSettings
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from bridge.tokens.service import TokenService
from bridge.web.app import create_app
from tests.doubles import MemoryAssignmentSource, MemoryRevocationStore, one_grant

ISSUER = "https://127.0.0.1:9443"
INGEST = "ingest-test-secret-0123456789"


def token_service() -> TokenService:
    return TokenService(
        ring=KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret())),
        settings=TokenSettings(issuer=ISSUER, audience="pacs"),
        mfa_rule=mfa.MfaRule(),
        keycloak=None,
        assignments=MemoryAssignmentSource({}),
        revocations=MemoryRevocationStore(),
        role_permissions=DEFAULT_ROLE_PERMISSIONS,
    )


@pytest.fixture
def env(tmp_path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(url)
    store = AuditStore(db.engine(url), CheckpointKey.generate(), checkpoint_every=5)
    service = token_service()
    settings = load_config(store={"url": url}, audit={"ingest_token": INGEST})
    app = create_app(settings, token_service=service, audit_store=store)
    for i in range(7):
        store.append(ev.AuditEvent(
            AuditEventType.STUDY_ACCESSED if i % 2 else AuditEventType.LOGIN_FAILURE,
            actor=ev.Actor(f"u{i % 3}@{ISSUER}", f"user{i % 3}", "viewer", "10.0.0.1"),
            objects=(ev.patient(f"P-{i % 2}"), ev.study(f"1.2.3.{i % 2}")),
            details={"i": i}, description="=HYPERLINK(\"http://x\")",
        ))
    return {"client": app.test_client(), "service": service, "store": store}


def mint(service: TokenService, perms: set[P], *, amr: tuple[str, ...] = ("pwd", "otp")) -> str:
    now = int(time.time())
    body = claims_mod.build(
        TokenSettings(issuer=ISSUER, audience="pacs"),
        claims_mod.Subject(id="aud-1", username="audit.anne", auth_time=now - 5, amr=amr),
        one_grant(("auditor",), perms),
        "audit-console", now=now,
    )
    return service.ring.sign(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def last(store: AuditStore) -> dict[str, Any]:
    return store.tail(1)[0]


def test_no_token_is_401_with_a_bare_bearer_challenge(env):
    r = env["client"].get("/audit/events")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="pacs-bridge-audit"'


def test_bad_token_is_401_invalid_token(env):
    r = env["client"].get("/audit/events", headers=bearer("not.a.token"))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_without_the_permission_is_403_insufficient_scope_and_audited(env):
    before = env["store"].count()
    r = env["client"].get("/audit/events", headers=bearer(mint(env["service"], {P.VIEW, P.ADMIN})))
    assert r.status_code == 403
    www = r.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in www and 'scope="audit-logs"' in www
    assert env["store"].count() == before + 1
    rec = last(env["store"])
    assert rec["type"] == "access.denied" and rec["actor_username"] == "audit.anne"


def test_revoked_token_is_refused(env):
    token = mint(env["service"], {P.AUDIT_LOGS})
    claims = env["service"].verifier.verify(token).claims
    env["service"].revocations.revoke(claims["jti"], claims["exp"])
    assert env["client"].get("/audit/events", headers=bearer(token)).status_code == 401


def test_token_without_mfa_is_refused_by_the_same_verifier(env):
    r = env["client"].get("/audit/events", headers=bearer(mint(env["service"], {P.AUDIT_LOGS}, amr=("pwd",))))
    assert r.status_code == 401


def test_filters_paging_and_the_query_is_audited(env):
    client, store, token = env["client"], env["store"], mint(env["service"], {P.AUDIT_LOGS})
    r = client.get("/audit/events?patient=P-1&type=study.accessed&limit=2", headers=bearer(token))
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.json
    assert [e["seq"] for e in body["events"]] == [2, 4]
    assert all(e["patient_id"] == "P-1" and e["type"] == "study.accessed" for e in body["events"])
    assert body["next"] and 'rel="next"' in r.headers["Link"]
    used = last(store)
    assert used["type"] == "audit.log_used" and used["actor_user"] == f"aud-1@{ISSUER}"
    assert used["client_id"] == "audit-console"
    nxt = client.get(body["next"].replace("http://localhost", ""), headers=bearer(token)).json
    assert [e["seq"] for e in nxt["events"]] == [6] and nxt["next"] is None
    users = client.get("/audit/events?user=user1", headers=bearer(token)).json["events"]
    assert {e["actor_username"] for e in users} == {"user1"}
    assert len(client.get("/audit/events?until=2000-01-01", headers=bearer(token)).json["events"]) == 0


def test_csv_export_neutralises_formulas(env):
    r = env["client"].get("/audit/events?format=csv&type=login.failure",
                          headers=bearer(mint(env["service"], {P.AUDIT_LOGS})))
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert len(rows) == 4 and all(row["type"] == "login.failure" for row in rows)
    assert all(row["description"].startswith("'=") for row in rows)


@pytest.mark.parametrize("query, field", [("since=yesterday", "since"), ("type=nope", "type"),
                                          ("format=xml", "format"), ("limit=0", "limit"), ("after=x", "after")])
def test_bad_parameters_are_400_naming_the_field(env, query, field):
    r = env["client"].get(f"/audit/events?{query}", headers=bearer(mint(env["service"], {P.AUDIT_LOGS})))
    assert r.status_code == 400 and r.json["error_description"].startswith(field)


def _payload(n: int = 2) -> list[dict[str, Any]]:
    return [ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor("s@i", "rad.alice"),
                          objects=(ev.study("1.2.9"),), details={"pacs": "orthanc"}).to_dict() for _ in range(n)]


def test_ingest_appends_once_even_when_a_batch_is_resent(env):
    client, store = env["client"], env["store"]
    events = _payload()
    before = store.count()
    h = bearer(INGEST)
    r = client.post("/audit/events", json={"events": events}, headers=h)
    assert r.status_code == 202 and r.json == {"accepted": 2, "duplicates": 0, "rejected": []}
    r = client.post("/audit/events", json={"events": events + events}, headers=h)
    assert r.status_code == 202 and r.json == {"accepted": 0, "duplicates": 4, "rejected": []}
    assert store.count() == before + 2 and store.verify().ok


def test_ingest_needs_the_secret(env):
    client = env["client"]
    assert client.post("/audit/events", json={"events": _payload()}).status_code == 401
    assert client.post("/audit/events", json={"events": _payload()}, headers=bearer("wrong")).status_code == 401


def test_ingest_keeps_an_event_whose_identifiers_look_like_credentials(env):
    """Audit evasion: a PatientID ``Basic 4711`` or a JWT-looking value is hashed, never a 400."""
    client, store = env["client"], env["store"]
    leaky = _payload(1)[0]
    leaky["actor"]["user_id"] = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    leaky["objects"].append({"kind": "patient", "id": "Basic 4711", "name": "Bearer abc"})
    leaky["details"]["paths"] = ["/x\x00\ud800"]
    r = client.post("/audit/events", json={"events": [leaky]}, headers=bearer(INGEST))
    assert r.status_code == 202 and r.json["accepted"] == 1, r.json
    rows = store.query(patient="Basic 4711")
    assert len(rows) == 1 and rows[0]["patient_id"] == ev.redaction_marker("Basic 4711")
    assert rows[0]["actor_user"].startswith("redacted-sha256:") and "c2lnbmF0dXJl" not in rows[0]["body"]
    assert "normalised" in rows[0]["body"] and store.verify().ok


@pytest.mark.parametrize("bad", [
    {"outcome": "nope"}, {"time": "yesterday"}, {"time": None}, {"actor": {"user_id": 1, "evil": 2}},
    {"actor": "not-a-dict"}, {"objects": [{"kind": "nope", "id": "x"}, {"kind": "study"}, "x"]},
    {"details": ["not", "a", "dict"]}, {"description": 12}, {"correlation_id": {"a": 1}},
    {"event_id": 5}, {"event_id": "x" * 100}, {"objects": "nope"},
])
def test_ingest_normalises_malformed_fields_and_keeps_the_event(env, bad):
    client, store = env["client"], env["store"]
    item = _payload(1)[0] | bad
    r = client.post("/audit/events", json={"events": [item]}, headers=bearer(INGEST))
    assert r.status_code == 202 and r.json["accepted"] == 1, r.json
    row = last(store)
    assert row["type"] == "study.accessed" and "normalised" in row["body"]
    assert store.verify().ok


@pytest.mark.parametrize("etype", ["login.success", "audit.log_used", "key.rotated", "no.such", None, 7])
def test_ingest_accepts_only_pacs_access_types_and_records_a_rejection(env, etype):
    client, store = env["client"], env["store"]
    item = _payload(1)[0] | {"type": etype}
    r = client.post("/audit/events", json={"events": [_payload(1)[0], item, "junk"]}, headers=bearer(INGEST))
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 1 and [x["index"] for x in r.json["rejected"]] == [1, 2]
    assert r.json["rejected"][0]["field"] == "events[1].type"
    rejected = store.query(types=["audit.input_rejected"])
    assert len(rejected) == 2 and "events[1].type" in rejected[0]["body"]
    if etype in ("login.success", "audit.log_used", "key.rotated"):  # the forged type is not in the trail
        assert not [x for x in store.query(types=[etype]) if x["actor_username"] == "rad.alice"]
    # a re-sent batch does not record the rejection twice
    client.post("/audit/events", json={"events": [_payload(1)[0], item, "junk"]}, headers=bearer(INGEST))
    assert len(store.query(types=["audit.input_rejected"])) == 2


def test_ingest_clamps_times_to_a_window_around_the_server_clock(env):
    import datetime as dt

    client, store = env["client"], env["store"]
    now = dt.datetime.now(dt.UTC)
    future, ancient, recent = (_payload(1)[0] for _ in range(3))
    future["time"] = ev.format_time(now + dt.timedelta(days=365))
    ancient["time"] = ev.format_time(now - dt.timedelta(days=3650))
    recent["time"] = ev.format_time(now - dt.timedelta(seconds=30))
    r = client.post("/audit/events", json={"events": [future, ancient, recent]}, headers=bearer(INGEST))
    assert r.status_code == 202 and r.json["accepted"] == 3
    by_id = {row["event_id"]: row for row in store.query()}
    f, a, ok = by_id[future["event_id"]], by_id[ancient["event_id"]], by_id[recent["event_id"]]
    assert ev.parse_time(f["time"]) <= now + dt.timedelta(seconds=ev.INGEST_MAX_SKEW_SECONDS + 5)
    assert ev.parse_time(a["time"]) >= now - dt.timedelta(seconds=ev.INGEST_MAX_AGE_SECONDS + 5)
    for row, claimed in ((f, future["time"]), (a, ancient["time"])):
        clamp = json.loads(row["body"])["details"]["time_clamped"]
        assert clamp["claimed"] == claimed
    assert ok["time"] == recent["time"] and "time_clamped" not in ok["body"]


def test_ingest_is_off_without_a_configured_secret(tmp_path):
    settings = load_config(store={"url": f"sqlite:///{tmp_path}/x.db"})
    app = create_app(settings, token_service=token_service(), audit_store=object())
    assert app.test_client().post("/audit/events", json={"events": []},
                                  headers=bearer("x")).status_code == 404


@pytest.mark.parametrize("etype", ["STUDY.ACCESSED", "study.accessed ", " study.accessed", "study.accessed\u200b",
                                   "\u0455tudy.accessed", "study_accessed", "AuditEventType.STUDY_ACCESSED",
                                   "study.accessed\x00", "Study.Accessed", "110110"])
def test_ingest_refuses_a_pacs_type_spelled_differently(env, etype):
    client, store = env["client"], env["store"]
    item = _payload(1)[0] | {"type": etype}
    r = client.post("/audit/events", json={"events": [item]}, headers=bearer(INGEST))
    assert r.status_code == 202 and r.json["accepted"] == 0 and r.json["rejected"][0]["field"] == "events[0].type"
    assert last(store)["type"] == "audit.input_rejected"


def test_ingest_patient_id_that_is_a_jwt_stays_searchable(env):
    client, store = env["client"], env["store"]
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwYXRpZW50In0.c2lnbmF0dXJlc2ln"
    item = _payload(1)[0]
    item["objects"].append({"kind": "patient", "id": jwt_like, "name": jwt_like})
    r = client.post("/audit/events", json={"events": [item]}, headers=bearer(INGEST))
    assert r.status_code == 202 and r.json["accepted"] == 1
    rows = store.query(patient=jwt_like)
    assert len(rows) == 1 and "c2lnbmF0dXJlc2ln" not in rows[0]["body"] and store.verify().ok


@pytest.mark.parametrize("perms", [{"audit-logs": True}, "audit-logs", [["audit-logs"]]])
def test_a_permissions_claim_that_is_not_a_list_grants_nothing(env, perms):
    """As the PACS verifier reads it (bridge.core.grants): only a grant with a list of names counts,
    and the top-level ``permissions`` (display only) never does."""
    now = int(time.time())
    body = claims_mod.build(
        TokenSettings(issuer=ISSUER, audience="pacs"),
        claims_mod.Subject(id="aud-2", username="audit.odd", auth_time=now - 5, amr=("pwd", "otp")),
        one_grant(("auditor",), ()), "audit-console", now=now)
    body["grants"] = [{"kind": "role", "role": "auditor", "permissions": perms, "scope": {}}]
    body["permissions"] = ["audit-logs"]
    r = env["client"].get("/audit/events", headers=bearer(env["service"].ring.sign(body)))
    assert r.status_code == 403, perms
