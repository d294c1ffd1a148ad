"""Internal shares against the real stack (issue 14, "Tests"): rad.alice (radiologist, holds ``share``)
logs in at Keycloak with password + TOTP, exchanges for a PACS token at the stack's bridge and shares
a Radiology study with card.liam (cardiologist: Cardiology studies only).  card.liam's next login at
the gateway lists the study and opens it; after the share's expiry the PACS refuses it with the same
token; after a revocation his next token carries no share.  Then the ways around it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from share_helpers import ShareStack

from pacs_devstack import demo_data
from pacs_devstack.realm import AD_REALM
from tests.integration.oidc.oidc_helpers import browse, otp_for

pytestmark = pytest.mark.integration

HEALTH_CARE = "GDPR Art. 6(1)(e) + Art. 9(2)(h): provision of health care"


def share_body(study_uid: str, **over: Any) -> dict[str, Any]:
    return {"study_uid": study_uid, "recipient": {"type": "user", "username": "card.liam"}, "purpose": "TREAT",
            "legal_basis": HEALTH_CARE, "lifetime": "1h", "permissions": ["view"], **over}


def gateway_studies(s: ShareStack, username: str) -> tuple[Any, set[str]]:
    """A fresh gateway login (Keycloak forms followed as a browser would) and the study list it shows."""
    http = s.http()
    http.headers["Accept"] = "text/html"  # a page load: the gateway sends it to Keycloak to log in
    result = browse(http, s.gateway + "/", "https://never.invalid", username,
                    str(demo_data.user(username)["password"]), otp_for(AD_REALM, username))
    assert result.status == 200 and result.final.startswith(s.gateway), (result.status, result.final, result.body[:300])
    http.headers["Accept"] = "application/json"
    r = http.get(s.gateway + "/studies", timeout=30)
    assert r.status_code == 200, r.text[:300]
    return http, set(r.json())


def test_internal_share_appears_for_the_recipient_and_ends_at_expiry_and_revocation(share_stack: ShareStack) -> None:
    s = share_stack
    study = s.upload("SHAREINT^ONE", department="Radiology")
    _, before = gateway_studies(s, "card.liam")
    assert study["study_id"] not in before  # a Radiology study: outside the cardiologist's scope

    alice = s.login_token("rad.alice")
    http = s.http()
    r = http.post(s.bridge + "/shares", json=share_body(study["study_uid"], lifetime=40), timeout=30,
                  headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 201, r.text[:500]
    share = r.json()
    started = time.monotonic()

    liam, listed = gateway_studies(s, "card.liam")
    assert study["study_id"] in listed
    assert liam.get(f"{s.gateway}/studies/{study['study_id']}", timeout=30).status_code == 200
    # view only: the archive needs download, which the share does not give
    assert liam.get(f"{s.gateway}/studies/{study['study_id']}/archive", timeout=30).status_code == 403

    # expiry is enforced by the PACS on the token already issued (the grant's own exp)
    time.sleep(max(0.0, 40 - (time.monotonic() - started)) + 2)
    status = liam.get(f"{s.gateway}/studies/{study['study_id']}", timeout=30).status_code
    # refused: by the PACS on the expired grant (403); or by the gateway (401) when it ended the
    # session at the renewal due by now -- either way no access, and a new login does not bring it back
    assert status in (401, 403), status
    if status == 401:
        liam, _ = gateway_studies(s, "card.liam")
        assert liam.get(f"{s.gateway}/studies/{study['study_id']}", timeout=30).status_code == 403
    assert study["study_id"] not in set(liam.get(s.gateway + "/studies", timeout=30).json())

    # a second share, then revoked: the next token no longer carries it
    r = http.post(s.bridge + "/shares", json=share_body(study["study_uid"]), timeout=30,
                  headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 201, r.text[:500]
    second = r.json()
    token = s.login_token("card.liam")
    orthanc = s.http()
    assert orthanc.get(f"{s.orthanc}/studies/{study['study_id']}", timeout=30,
                       headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = http.delete(f"{s.bridge}/shares/{second['id']}", timeout=30, headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    token = s.login_token("card.liam")
    assert orthanc.get(f"{s.orthanc}/studies/{study['study_id']}", timeout=30,
                       headers={"Authorization": f"Bearer {token}"}).status_code == 403
    _, listed = gateway_studies(s, "card.liam")
    assert study["study_id"] not in listed

    # the trail: created, revoked, with purpose and legal basis
    rows = s.services.audit_store.query(types=["share.created", "share.revoked"], study=study["study_uid"])
    assert [r["type"] for r in rows] == ["share.created", "share.created", "share.revoked"]
    assert HEALTH_CARE in rows[0]["body"] and share["id"] in rows[0]["body"]


def test_sharing_a_study_you_cannot_see_or_without_share_is_refused(share_stack: ShareStack) -> None:
    s = share_stack
    cardio = s.upload("SHAREINT^CARDIO", department="Cardiology")
    http = s.http()
    alice = s.login_token("rad.alice")
    # a study that does not exist (or that the plugin hides from the sharer): the same 404
    r = http.post(s.bridge + "/shares", json=share_body("1.2.3.4.5.6.7.8.9"), timeout=30,
                  headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 404, r.text[:300]
    # card.liam sees his Cardiology study but holds no share permission
    liam = s.login_token("card.liam")
    r = http.post(s.bridge + "/shares", json=share_body(cardio["study_uid"],
                                                        recipient={"type": "user", "username": "rad.alice"}),
                  timeout=30, headers={"Authorization": f"Bearer {liam}"})
    assert r.status_code == 403, r.text[:300]
    # alice may share view only with colleagues... but not a permission outside the rule
    r = http.post(s.bridge + "/shares", json=share_body(cardio["study_uid"], permissions=["view", "delete"]),
                  timeout=30, headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code in (400, 403), r.text[:300]
    # no token, a repeated header, a Keycloak token instead of a PACS token
    assert http.post(s.bridge + "/shares", json=share_body(cardio["study_uid"]), timeout=30).status_code == 401
    r = http.get(s.bridge + "/shares", timeout=30, headers={"Authorization": f"Bearer {alice}, Bearer {alice}"})
    assert r.status_code == 400
