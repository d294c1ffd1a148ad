"""Attacks on the bridge's own HTTP side that got through before (each test failed before its fix):
secrets guessed on endpoints without a rate limit or an audit record, an IPv6 client buying a new
budget per address of its /64, and auditor-API parameters that answered 500 instead of 400."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask import Flask

from bridge.config import WebSection
from bridge.core.audit_codes import AuditEventType
from bridge.core.permissions import Permission as P
from bridge.web import client, limits
from tests.unit.web.test_audit_api import bearer, mint
from tests.unit.web.test_client_address import XFF, make

PEER = {"REMOTE_ADDR": "192.0.2.7"}
WRONG_BASIC = {"Authorization": "Basic " + base64.b64encode(b"orthanc:guess").decode()}
ORTHANC_AUTH = ("/orthanc-auth/tokens/validate", "/orthanc-auth/user/get-profile", "/orthanc-auth/tokens/decode")


def events_of(env: dict[str, Any], kind: AuditEventType) -> list[dict[str, Any]]:
    env["sink"].flush()
    return [r for r in env["store"].tail(50) if r["type"] == kind.value]


@pytest.mark.parametrize("path", ORTHANC_AUTH)
def test_orthanc_auth_secret_guessing_is_rate_limited(tmp_path, path: str) -> None:
    """The introspection client's secret is checked here as on /introspect: same budget."""
    env = make(tmp_path, rate={"PACS_BRIDGE_RATE_INTROSPECT": "3/minute"})
    c = env["client"]
    codes = [c.post(path, json={}, headers=WRONG_BASIC, environ_base=PEER).status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    assert c.post(path, json={}, headers=WRONG_BASIC, environ_base=PEER).status_code == 429
    # the budget is shared with /introspect (one secret, one budget)
    assert c.post("/introspect", data={"token": "x"}, environ_base=PEER).status_code == 429


def test_orthanc_auth_refused_credentials_are_audited(tmp_path) -> None:
    env = make(tmp_path)
    r = env["client"].post("/orthanc-auth/tokens/validate", json={}, headers=WRONG_BASIC, environ_base=PEER)
    assert r.status_code == 401
    denied = [e for e in events_of(env, AuditEventType.ACCESS_DENIED) if "orthanc-auth" in str(e)]
    assert denied, "a refused Basic login on /orthanc-auth left no audit record"
    assert denied[-1]["network_address"] == "192.0.2.7"
    assert "guess" not in str(denied[-1])  # never the presented secret


def test_audit_ingest_secret_guessing_is_rate_limited_and_audited(tmp_path) -> None:
    env = make(tmp_path, rate={"PACS_BRIDGE_RATE_AUDIT": "2/minute"})
    env["app"].config["PACS_BRIDGE_AUDIT_INGEST_TOKEN"] = "ingest-secret-0123456789abcdef"  # audit.ingest_token
    c = env["client"]
    codes = [c.post("/audit/events", json={"events": []}, headers=bearer(f"guess-{i}"), environ_base=PEER).status_code
             for i in range(3)]
    assert codes == [401, 401, 429]
    denied = [e for e in events_of(env, AuditEventType.ACCESS_DENIED) if "POST /audit/events" in str(e)]
    assert denied and denied[-1]["network_address"] == "192.0.2.7"
    assert "guess-" not in str(denied[-1])


def test_audit_query_is_rate_limited(tmp_path) -> None:
    env = make(tmp_path, rate={"PACS_BRIDGE_RATE_AUDIT": "2/minute"})
    c = env["client"]
    codes = [c.get("/audit/events", headers=bearer("forged"), environ_base=PEER).status_code for _ in range(3)]
    assert codes == [401, 401, 429]


def _ipv6_app() -> Flask:
    web = WebSection(trusted_proxy_hops=1, rate_limits={"revocations": "3/minute"})
    app = Flask("t")
    app.config.update(limits.app_config(web))
    client.install_proxy_fix(app, web)

    @app.get("/x")
    @limits.limit("revocations")
    def x() -> str:
        return "ok"

    limits.init_app(app)
    return app


def test_an_ipv6_client_does_not_get_a_budget_per_address_of_its_64() -> None:
    """A host picks any address of its /64 (privacy addresses): one budget per /64."""
    c = _ipv6_app().test_client()
    codes = [c.get("/x", headers={XFF: f"2001:db8:1:2::{i:x}"}, environ_base=PEER).status_code for i in range(1, 6)]
    assert codes == [200, 200, 200, 429, 429]
    # another /64 is another client
    assert c.get("/x", headers={XFF: "2001:db8:1:3::1"}, environ_base=PEER).status_code == 200


def test_ipv4_clients_keep_one_budget_per_address() -> None:
    c = _ipv6_app().test_client()
    codes = [c.get("/x", headers={XFF: f"10.0.0.{i}"}, environ_base=PEER).status_code for i in range(1, 6)]
    assert codes == [200] * 5


@pytest.mark.parametrize("query, field", [
    ("since=9999-12-31T23:59:59-01:00", "since"),
    ("until=0001-01-01T00:00:00%2B01:00", "until"),
    ("after=" + "9" * 40, "after"),
])
def test_out_of_range_query_parameters_are_400_not_500(tmp_path, query: str, field: str) -> None:
    env = make(tmp_path)
    r = env["client"].get(f"/audit/events?{query}", headers=bearer(mint(env["service"], {P.AUDIT_LOGS})))
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.json["error_description"].startswith(field)


@pytest.mark.parametrize("value", ["\u00a0=1+1", "\ufeff=HYPERLINK(\"http://x\")", "\u200b=cmd|' /C calc'!A0",
                                   "\x0b=1", "\x0c+1", "\u2028@SUM(A1)", "\u2003-1+1", "\x00=1"])
def test_csv_cells_behind_invisible_leading_characters_are_neutralised(value: str) -> None:
    """A formula hidden behind a no-break space, a BOM, a zero-width or other invisible character
    (a spreadsheet may drop it and run the rest) is neutralised like a bare one."""
    from bridge.audit.export import csv_cell

    assert csv_cell(value).startswith("'"), repr(csv_cell(value))


def test_csv_cells_with_ordinary_text_are_unchanged() -> None:
    from bridge.audit.export import csv_cell

    for value in ("rad.alice", "1.2.840.113619", "Müller^Hans", " x=1", "\u00a0x"):
        assert csv_cell(value) == value


def test_a_huge_intake_body_is_refused_before_it_is_parsed(tmp_path) -> None:
    """Even the ingest secret's holder cannot make a worker parse a body of any size (one JSON
    document held in memory several times over): 413 above the app's body limit."""
    from bridge.web.app import MAX_BODY_BYTES

    env = make(tmp_path)
    env["app"].config["PACS_BRIDGE_AUDIT_INGEST_TOKEN"] = "ingest-secret-0123456789abcdef"
    body = b'{"events": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
    r = env["client"].post("/audit/events", data=body, content_type="application/json",
                           headers=bearer("ingest-secret-0123456789abcdef"), environ_base=PEER)
    assert r.status_code == 413


def test_an_intake_batch_stored_meanwhile_by_the_other_instance_is_202_not_500(tmp_path) -> None:
    """HAProxy retries POST /audit/events on the other instance while the first still writes it:
    both find the ids new, the second insert hits the unique event_id.  It must count them as
    duplicates (202), not answer 500."""
    from bridge.core import audit_events as ev
    from tests.unit.web.test_audit_api import _payload

    env = make(tmp_path)
    env["app"].config["PACS_BRIDGE_AUDIT_INGEST_TOKEN"] = "ingest-secret-0123456789abcdef"
    store = env["store"]
    batch = _payload(3)
    real = store.append_many
    raced = []

    def other_instance_first(events: Any) -> Any:
        if not raced:  # the other instance commits the same batch between our check and our insert
            raced.append(True)
            real([ev.AuditEvent.from_dict(e) for e in batch])
        return real(events)

    store.append_many = other_instance_first
    before = store.count()
    r = env["client"].post("/audit/events", json={"events": batch},
                           headers=bearer("ingest-secret-0123456789abcdef"), environ_base=PEER)
    assert r.status_code == 202, r.get_data(as_text=True)[:300]
    assert r.json["accepted"] == 0 and r.json["duplicates"] == 3
    assert store.count() == before + 3 and store.verify().ok


def test_a_refused_intake_item_records_the_one_client_address(tmp_path) -> None:
    """The record of a refused intake item names the client as every other record does
    (client_address: after the trusted hops, one spelling per client), not the raw peer string."""
    env = make(tmp_path, hops=1)
    env["app"].config["PACS_BRIDGE_AUDIT_INGEST_TOKEN"] = "ingest-secret-0123456789abcdef"
    r = env["client"].post("/audit/events", json={"events": [{"type": "token.exchanged"}]},
                           headers={**bearer("ingest-secret-0123456789abcdef"), XFF: "::ffff:10.1.2.3"},
                           environ_base=PEER)
    assert r.status_code == 202 and r.json["rejected"]
    row = [e for e in env["store"].tail(5) if e["type"] == AuditEventType.AUDIT_INPUT_REJECTED.value][-1]
    assert row["network_address"] == "10.1.2.3"


def test_the_next_page_link_does_not_follow_the_host_header(tmp_path) -> None:
    """The bridge's URL comes from configuration, never from Host: a forged Host must not turn the
    auditor's "next" link (which the client follows with its audit-logs token) into another server."""
    env = make(tmp_path)
    from bridge.core import audit_events as ev

    for i in range(3):
        env["store"].append(ev.AuditEvent(AuditEventType.LOGIN_FAILURE, actor=ev.Actor(f"u{i}@x", f"u{i}")))
    r = env["client"].get("/audit/events?limit=1", headers={**bearer(mint(env["service"], {P.AUDIT_LOGS})),
                                                             "Host": "evil.test"}, environ_base=PEER)
    assert r.status_code == 200 and r.json["next"], r.json
    public = env["app"].config["BRIDGE_SETTINGS"].bridge.public_url.rstrip("/")
    assert r.json["next"].startswith(public + "/audit/events?"), r.json["next"]
    assert "evil.test" not in r.headers["Link"]
