"""Break-glass through the gateway and the API, with the Keycloak and Orthanc doubles: the form,
the new login it asks Keycloak for, the grant given only on a fresh login of the same person, the
review pages, /metrics, and the attacks (cross-site, no CSRF token, repeated or misspelt fields,
GET instead of POST, another person's login, the requester closing their own item)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from gateway_helpers import BASE, PREFIX, Gateway, kc_token

from bridge.breakglass.service import BreakGlass
from bridge.core import grants as grants_mod
from bridge.core import mfa
from bridge.oidc import session as sess
from bridge.policy.loader import load_policy
from bridge.store.db import engine, session
from bridge.store.models import RoleAssignment
from bridge.tokens.store import SqlAssignmentSource
from bridge.web import breakglass as api
from bridge.web.gateway import views

POLICY = Path(__file__).resolve().parents[3] / "examples" / "policy.yaml"
UID = "1.2.826.0.1.99.1"
SAME = {"Origin": BASE}


@pytest.fixture()
def g(tmp_path: Path) -> Gateway:
    gw = Gateway(tmp_path)
    eng = engine(gw.db_url)
    with session(eng) as s:
        s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="clinician", scopes={}))
        s.add(RoleAssignment(subject_id="guid-nils", username="comp.nils", role="auditor", scopes={}))
    store = gw.app.extensions.get("pacs_bridge_audit_store")
    appended: list[Any] = []
    bg = BreakGlass(eng, load_policy(POLICY), SqlAssignmentSource(eng),
                    store.append if store is not None else appended.append,
                    BASE, mfa.MfaRule(), fresh_auth_seconds=300)
    gw.bg = bg  # type: ignore[attr-defined]
    gw.app.extensions[api.EXTENSION] = lambda: bg
    gw.service.extra_grants = (bg.grants,)
    gw.service.role_permissions = {n: r.effective_permissions for n, r in load_policy(POLICY).roles.items()}
    return gw


def _form(g: Gateway, **over: Any) -> dict[str, Any]:
    csrf = views.csrf_for(g.gw, g.gw.store.get(g.client.get_cookie(views.COOKIE, domain="bridge.test").value))
    return {"csrf_token": csrf, "target_kind": "study", "target": UID, "reason": "Trauma patient, prior CT needed",
            "purpose_of_use": "BTG", **over}


def _callback(g: Gateway, monkeypatch: pytest.MonkeyPatch, **claims: Any) -> Any:
    access = kc_token(**claims)
    id_claims = jwt.decode(access, options={"verify_signature": False})
    monkeypatch.setattr(g.oauth, "authorize_access_token", lambda **kw: {
        "access_token": access, "refresh_token": "rt-bg", "id_token": "id.token.bg",
        "userinfo": {k: v for k, v in id_claims.items() if k not in ("typ", "azp")}})
    return g.get("/oidc/callback?code=x&state=y")


def test_the_landing_page_offers_the_form_to_an_emergency_role_only(g: Gateway) -> None:
    g.log_in()
    page = g.get(PREFIX + "/").get_data(as_text=True)
    assert 'action="/pacs/break-glass"' in page and 'name="purpose_of_use" value="BTG"' in page
    with session(engine(g.db_url)) as s:
        s.query(RoleAssignment).filter_by(role="clinician").delete()
    assert "break-glass" not in g.get(PREFIX + "/").get_data(as_text=True)


def test_the_request_asks_keycloak_for_a_new_mfa_login_and_grants_nothing_yet(g: Gateway) -> None:
    g.log_in()
    r = g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    assert r.status_code == 302
    query = parse_qs(urlsplit(r.headers["Location"]).query)
    assert query["prompt"] == ["login"] and query["max_age"] == ["0"] and query["acr_values"] == ["mfa"]
    assert g.bg.items() == []  # type: ignore[attr-defined]


def test_a_fresh_login_of_the_requester_yields_the_grant_in_the_new_token(
        g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    old = g.log_in()
    g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    r = _callback(g, monkeypatch, auth_time=int(time.time()))
    assert r.status_code == 200 and "Emergency access granted" in r.get_data(as_text=True)
    (item,) = g.bg.items()  # type: ignore[attr-defined]
    assert item.target.value == UID and item.client_id == "pacs-gateway"
    assert g.gw.store.get(old) is None  # the old session is replaced
    raw = g.client.get_cookie(views.COOKIE, domain="bridge.test").value
    claims = views._token_claims(g.gw.store.get(raw).tokens.pacs_token)
    (bg_grant,) = [x for x in grants_mod.from_claims(claims) if x.kind == "break-glass"]
    assert bg_grant.studies == frozenset({UID}) and bg_grant.exp == int(item.expires_at.timestamp())
    assert "BTG" in [p["code"] for p in claims["extensions"]["ihe_iua"]["purpose_of_use"]]


def test_an_old_sso_login_does_not_count(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """prompt=login and max_age=0 stripped from the redirect: Keycloak answers from its SSO
    session with the old auth_time, which predates the request."""
    g.log_in()
    g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    r = _callback(g, monkeypatch, auth_time=int(time.time()) - 30)
    assert "Emergency access refused" in r.get_data(as_text=True) and r.status_code == 401
    assert g.bg.items(None) == []  # type: ignore[attr-defined]


def test_a_password_only_new_login_is_refused(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    g.log_in()
    g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    r = _callback(g, monkeypatch, auth_time=int(time.time()), acr="basic", amr=["pwd"])
    assert r.status_code == 401 and g.bg.items(None) == []  # type: ignore[attr-defined]


def test_another_persons_new_login_is_refused(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    g.log_in()
    g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    r = _callback(g, monkeypatch, auth_time=int(time.time()), directory_id="guid-nils",
                  preferred_username="comp.nils", sub="kc-uuid-2")
    assert "not the requester" in r.get_data(as_text=True) and g.bg.items(None) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("mutate, status", [
    (lambda f: {**f, "csrf_token": "x"}, 403),
    (lambda f: {k: v for k, v in f.items() if k != "csrf_token"}, 400),
    (lambda f: {**f, "Target": UID}, 400),  # a misspelt extra field
    (lambda f: {**{k: v for k, v in f.items() if k != "target"}, "target ": UID}, 400),
    (lambda f: {**f, "target": [UID, "1.2.3"]}, 400),  # repeated field
    (lambda f: {**f, "purpose_of_use": "TREAT"}, 400),
    (lambda f: {**f, "target_kind": "STUDY"}, 400),
    (lambda f: {**f, "reason": "help"}, 400),
])
def test_odd_forms_are_refused_before_any_login(g: Gateway, mutate: Any, status: int) -> None:
    g.log_in()
    r = g.post(PREFIX + "/break-glass", data=mutate(_form(g)), headers=SAME)
    assert r.status_code == status and "Location" not in r.headers
    with g.client.session_transaction(base_url=BASE) as s:
        assert sess.PENDING not in s


def test_cross_site_and_query_string_posts_are_refused(g: Gateway) -> None:
    g.log_in()
    assert g.post(PREFIX + "/break-glass", data=_form(g), headers={"Origin": "https://evil.test"}).status_code == 403
    assert g.post(PREFIX + "/break-glass", data=_form(g)).status_code == 403  # no Origin, no Sec-Fetch-Site
    assert g.post(PREFIX + "/break-glass?target=1.2.3", data=_form(g), headers=SAME).status_code == 400


def test_a_get_with_the_fields_never_grants_and_never_reaches_orthanc(g: Gateway) -> None:
    g.log_in()
    r = g.get(PREFIX + "/break-glass", query_string=_form(g))
    assert r.status_code == 200 and g.bg.items(None) == []  # type: ignore[attr-defined]
    assert g.get(PREFIX + "/break-glass/anything").status_code == 404
    assert g.orthanc.requests == []


def test_a_role_without_the_capability_is_refused_and_audited(g: Gateway) -> None:
    with session(engine(g.db_url)) as s:
        s.query(RoleAssignment).filter_by(role="clinician").delete()
    g.log_in()
    r = g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    assert r.status_code == 403 and "Location" not in r.headers


def test_the_per_user_limit_counts_grants_even_a_replayed_request(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is counted where a grant is given (the login callback): the pending request lives
    in the browser's signed session cookie, and a kept copy replayed at the callback must not get
    round a limit counted only when the form was sent (found by the attack review)."""
    g.app.config["PACS_BRIDGE_RATE_BREAK_GLASS"] = "2/minute"
    g.log_in()
    assert g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME).status_code == 302
    name = g.app.config["SESSION_COOKIE_NAME"]
    kept = g.client.get_cookie(name, domain="bridge.test")  # the Flask session holding the pending request
    assert kept is not None
    statuses = []
    for _ in range(3):  # the same pending request, replayed
        g.client.set_cookie(kept.key, kept.value, domain=kept.domain, path=kept.path)
        statuses.append(_callback(g, monkeypatch, auth_time=int(time.time())).status_code)
    assert statuses[2] == 429 and len(g.bg.items()) <= 2  # type: ignore[attr-defined]


def _log_in_nils(g: Gateway) -> None:
    """A session of the auditor comp.nils (the harness's log_in names every session rad.alice)."""
    from bridge.web.gateway.sessions import Tokens

    issued = g.issue(directory_id="guid-nils", preferred_username="comp.nils", sub="kc-uuid-2")
    g.set_cookie(g.gw.store.create(subject_id="guid-nils", kc_sub="kc-uuid-2", sid="kc-sid-2", username="comp.nils",
                                   tokens=Tokens(issued.access_token, "rt-n", "id.n"),
                                   token_exp=float(issued.claims["exp"]), lifetime_seconds=3600))


def _grant(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> str:
    g.log_in()
    g.post(PREFIX + "/break-glass", data=_form(g), headers=SAME)
    _callback(g, monkeypatch, auth_time=int(time.time()))
    (item,) = g.bg.items()  # type: ignore[attr-defined]
    return item.id


def test_the_requester_cannot_close_their_own_item_even_with_audit_logs(
        g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    with session(engine(g.db_url)) as s:
        s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="auditor", scopes={}))
    item_id = _grant(g, monkeypatch)
    page = g.get(PREFIX + "/break-glass/reviews").get_data(as_text=True)
    assert "Your own request" in page
    csrf = _form(g)["csrf_token"]
    r = g.post(f"{PREFIX}/break-glass/reviews/{item_id}", headers=SAME,
               data={"csrf_token": csrf, "verdict": "justified", "comment": "fine"})
    assert r.status_code == 403 and g.bg.open_count() == 1  # type: ignore[attr-defined]


def test_a_reviewer_closes_it_in_the_page_and_metrics_count_open_items(
        g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    item_id = _grant(g, monkeypatch)
    metrics = g.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_data(as_text=True)
    assert "pacs_bridge_break_glass_open_reviews 1.0" in metrics
    assert g.get(PREFIX + "/break-glass/reviews").status_code == 403  # the requester holds no audit-logs
    _log_in_nils(g)
    page = g.get(PREFIX + "/break-glass/reviews").get_data(as_text=True)
    assert f'action="/pacs/break-glass/reviews/{item_id}"' in page
    csrf = _form(g)["csrf_token"]
    bad = g.post(f"{PREFIX}/break-glass/reviews/{item_id}", headers=SAME,
                 data={"csrf_token": csrf, "verdict": ["justified", "not-justified"], "comment": "x"})
    assert bad.status_code == 400
    r = g.post(f"{PREFIX}/break-glass/reviews/{item_id}", headers=SAME,
               data={"csrf_token": csrf, "verdict": "not-justified", "comment": "no ED record"})
    assert r.status_code == 303 and g.bg.open_count() == 0  # type: ignore[attr-defined]
    metrics = g.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_data(as_text=True)
    assert "pacs_bridge_break_glass_open_reviews 0.0" in metrics


# ---------------------------------------------------------------- the API


def test_the_api_grants_on_a_fresh_mfa_token_and_refuses_an_old_one(g: Gateway) -> None:
    body = {"target_kind": "patient", "target": "P-7", "reason": "Cardiac arrest, priors needed",
            "purpose_of_use": "BTG"}
    stale = kc_token(auth_time=int(time.time()) - 600)
    old = g.post("/break-glass", json=body, headers={"Authorization": f"Bearer {stale}"})
    assert old.status_code == 401 and old.json["error"] == "insufficient_user_authentication"
    assert g.post("/break-glass", json={**body, "extra": 1},
                  headers={"Authorization": f"Bearer {kc_token()}"}).status_code == 400
    assert g.post("/break-glass", json=body).status_code == 401
    r = g.post("/break-glass", json=body, headers={"Authorization": f"Bearer {kc_token()}"})
    assert r.status_code == 201 and r.json["target"] == {"kind": "patient", "value": "P-7"}
    assert r.json["purpose_of_use"] == "BTG" and "token" not in str(r.json).lower()


def test_the_api_review_queue_needs_audit_logs_and_refuses_the_requester(g: Gateway) -> None:
    body = {"target_kind": "study", "target": UID, "reason": "Trauma patient, prior CT", "purpose_of_use": "BTG"}
    item = g.post("/break-glass", json=body, headers={"Authorization": f"Bearer {kc_token()}"}).json
    alice = g.issue().access_token
    assert g.get("/break-glass/reviews", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    nils = g.issue(directory_id="guid-nils", preferred_username="comp.nils").access_token
    listed = g.get("/break-glass/reviews", headers={"Authorization": f"Bearer {nils}"})
    assert listed.status_code == 200 and listed.json["open"] == 1
    assert g.get("/break-glass/reviews?state=open&state=all",
                 headers={"Authorization": f"Bearer {nils}"}).status_code == 400
    r = g.post(f"/break-glass/reviews/{item['id']}", json={"verdict": "justified", "comment": "ok"},
               headers={"Authorization": f"Bearer {nils}"})
    assert r.status_code == 200 and r.json["review"]["state"] == "justified"


def test_a_department_scoped_audit_logs_role_cannot_open_the_queue(
        g: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue spans every department: audit-logs held only inside one department's scope does not
    open it (the permissions of a scoped grant were unioned with the rest; attack review)."""
    item_id = _grant(g, monkeypatch)
    with session(engine(g.db_url)) as s:
        s.query(RoleAssignment).filter_by(subject_id="guid-nils").delete()
        s.add(RoleAssignment(subject_id="guid-nils", username="comp.nils", role="auditor",
                             scopes={"departments": ["Cardiology"]}))
    _log_in_nils(g)
    assert g.get(PREFIX + "/break-glass/reviews").status_code == 403
    csrf = _form(g)["csrf_token"]
    r = g.post(f"{PREFIX}/break-glass/reviews/{item_id}", headers=SAME,
               data={"csrf_token": csrf, "verdict": "justified", "comment": "fine"})
    assert r.status_code == 403 and g.bg.open_count() == 1  # type: ignore[attr-defined]
