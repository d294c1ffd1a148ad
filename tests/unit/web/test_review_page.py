"""The access review page (/review/): only reviewers with a live MFA gateway session get in;
decisions need same-origin, the session's CSRF token and every field exactly once; the decision
rules are the campaign's (tested against bypasses here through the page)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import MultiDict

from bridge.review import campaign, exceptions
from bridge.review.run import compute
from bridge.store.db import engine
from tests.unit.review.test_review import ISS, POLICY, snapshot
from tests.unit.web.gateway_helpers import BASE, Gateway

SAME = {"Origin": BASE}


@pytest.fixture
def g(tmp_path: Path) -> Gateway:
    gw = Gateway(tmp_path)
    eng = engine(gw.db_url)
    review = compute(eng, snapshot(), POLICY, issuer=ISS, keycloak=None, dormant_days=90)
    campaign.start(eng, review, started_by="test", deadline_days=14)
    return gw


def item(g: Gateway, username: str, role: str) -> Any:
    eng = engine(g.db_url)
    camp = campaign.current(eng)
    return next(i for i in campaign.items_of(eng, camp.id) if i.username == username and i.role == role)


def as_user(g: Gateway, name: str) -> str:
    g.log_in(directory_id=f"u-{name}", preferred_username=name)
    page = g.get("/review/")
    m = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.get_data(as_text=True))
    return m.group(1) if m else ""


def test_a_reviewer_sees_their_items_charts_and_exports(g: Gateway) -> None:
    as_user(g, "dora")
    page = g.get("/review/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "alice &mdash; reader" in html and "carl" not in html
    assert "dora &mdash;" not in html  # never her own item
    assert "script" not in page.headers["Content-Security-Policy"].replace("'none'", "")
    for chart in ("roles", "trend"):
        svg = g.get(f"/review/charts/{chart}.svg")
        assert svg.status_code == 200 and svg.mimetype == "image/svg+xml" and b"<svg" in svg.data
    csv = g.get("/review/export.csv")
    assert csv.status_code == 200 and "alice" in csv.get_data(as_text=True)
    js = g.get("/review/export.json")
    assert js.status_code == 200 and js.json["items"] and all(i["queue"] == "rad-head" for i in js.json["items"])
    assert g.open("/review/", method="HEAD").status_code == 200


def test_a_decision_through_the_form(g: Gateway) -> None:
    csrf = as_user(g, "dora")
    it = item(g, "alice", "reader")
    resp = g.post(f"/review/items/{it.id}", headers=SAME,
                  data={"csrf_token": csrf, "decision": "revoke", "comment": "left", "until": ""})
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/review/?status=decided")
    assert ("u-alice", "reader") in exceptions.by_key(engine(g.db_url))


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 403), ({"Origin": "https://evil.test"}, 403), ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403), ({"Origin": BASE.upper() + "."}, 403)])
def test_cross_site_decisions_are_refused(g: Gateway, headers: dict[str, str], status: int) -> None:
    csrf = as_user(g, "dora")
    it = item(g, "alice", "reader")
    resp = g.post(f"/review/items/{it.id}", headers=headers,
                  data={"csrf_token": csrf, "decision": "revoke", "comment": "x"})
    assert resp.status_code == status
    assert not exceptions.by_key(engine(g.db_url))


@pytest.mark.parametrize("data", [
    {"decision": "revoke", "comment": "x"},                                # no csrf token
    {"csrf_token": "0" * 64, "decision": "revoke", "comment": "x"},        # a wrong one
])
def test_decisions_need_the_sessions_csrf_token(g: Gateway, data: dict[str, str]) -> None:
    as_user(g, "dora")
    it = item(g, "alice", "reader")
    assert g.post(f"/review/items/{it.id}", headers=SAME, data=data).status_code == 403
    assert not exceptions.by_key(engine(g.db_url))


def test_repeated_or_unknown_fields_are_refused(g: Gateway) -> None:
    csrf = as_user(g, "dora")
    it = item(g, "alice", "reader")
    for data in ([("csrf_token", csrf), ("decision", "keep"), ("decision", "revoke"), ("comment", "x")],
                 [("csrf_token", csrf), ("decision", "revoke"), ("comment", "a"), ("comment", "b")],
                 [("csrf_token", csrf), ("csrf_token", csrf), ("decision", "revoke"), ("comment", "x")],
                 [("csrf_token", csrf), ("decision", "revoke"), ("comment", "x"), ("item", "7")]):
        resp = g.post(f"/review/items/{it.id}", headers=SAME, data=MultiDict(data))
        assert resp.status_code == 400, data
    assert item(g, "alice", "reader").decision is None


def test_another_departments_item_own_item_and_non_reviewers(g: Gateway) -> None:
    csrf = as_user(g, "dora")
    carl = item(g, "carl", "cardio")
    resp = g.post(f"/review/items/{carl.id}", headers=SAME, data={"csrf_token": csrf, "decision": "revoke",
                                                                 "comment": "not mine to decide"})
    assert resp.status_code == 403 and item(g, "carl", "cardio").decision is None
    csrf = as_user(g, "hank")
    hank = item(g, "hank", "reader")
    resp = g.post(f"/review/items/{hank.id}", headers=SAME, data={"csrf_token": csrf, "decision": "keep",
                                                                 "comment": "I am fine"})
    assert resp.status_code == 403 and item(g, "hank", "reader").decision is None
    # a non-reviewer: no page, no export, no chart, no decision (even with a valid session token)
    g.log_in(directory_id="u-alice", preferred_username="alice")
    for path in ("/review/", "/review/export.csv", "/review/export.json", "/review/charts/roles.svg"):
        assert g.get(path).status_code == 403, path
    alice = item(g, "alice", "reader")
    resp = g.post(f"/review/items/{alice.id}", headers=SAME, data={"csrf_token": csrf, "decision": "keep",
                                                                  "comment": "keep me"})
    assert resp.status_code == 403 and item(g, "alice", "reader").decision is None


def test_other_routes_to_a_decision(g: Gateway) -> None:
    csrf = as_user(g, "dora")
    it = item(g, "alice", "reader")
    data = {"csrf_token": csrf, "decision": "revoke", "comment": "x"}
    assert g.get(f"/review/items/{it.id}?decision=revoke&comment=x&csrf_token={csrf}").status_code == 405
    assert g.post(f"/review/items/{it.id}/", headers=SAME, data=data).status_code == 404
    assert g.post(f"/REVIEW/items/{it.id}", headers=SAME, data=data).status_code in (404, 405, 401)
    assert g.post(f"/review/items/%2e%2e/{it.id}", headers=SAME, data=data).status_code == 404
    assert g.post(f"/review/items/{it.id}.0", headers=SAME, data=data).status_code == 404
    assert item(g, "alice", "reader").decision is None


def test_without_a_session(g: Gateway) -> None:
    assert g.get("/review/", headers={"Sec-Fetch-Mode": "cors"}).status_code == 401
    nav = g.get("/review/", headers={"Sec-Fetch-Mode": "navigate"})
    assert nav.status_code in (302, 303)  # to Keycloak; after login back to /review/
    assert g.post("/review/items/1", headers=SAME, data={"decision": "keep"}).status_code == 401


def test_the_login_returns_to_the_review_page_but_nowhere_else(g: Gateway) -> None:
    from bridge.web.gateway import views

    with g.app.test_request_context("/"):
        assert views._safe_next("/review/") == "/review/"
        for bad in ("/review/../admin", "/review//evil.test", "/review/%2e%2e/x", "/reviewer", "https://evil.test/",
                    "/review/\\evil", "/review/\nx"):
            assert views._safe_next(bad) == "/pacs/", bad


def test_the_patient_report_is_for_the_privacy_officer(g: Gateway) -> None:
    as_user(g, "dora")
    assert g.get("/review/patient?patient_id=P1").status_code == 403
    as_user(g, "pat")
    assert g.get("/review/patient?patient_id=P1").status_code == 200
    assert g.get("/review/patient?patient_id=P1&patient_id=P2").status_code == 400


def test_the_compliance_report_is_for_the_privacy_officer(g: Gateway) -> None:
    as_user(g, "dora")
    assert g.get("/review/compliance").status_code == 403
    page = as_user(g, "pat")
    assert page
    r = g.get("/review/compliance")
    assert r.status_code == 200 and "Compliance evidence report" in r.get_data(as_text=True)
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert g.get("/review/compliance?x=1").status_code == 400
