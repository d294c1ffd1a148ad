"""Break-glass for a viewer that is not a browser, against the real Keycloak: POST /break-glass with
its own Keycloak access token, then the exchange at /token carries the grant and may state BTG.

* a password-only login (no second factor) is refused with insufficient_user_authentication;
* a password + TOTP login gets the grant on that patient; the exchanged PACS token carries it,
  and Orthanc serves that patient's study and refuses another;
* purpose_of_use=BTG at /token is refused to someone without a live break-glass grant.
"""

from __future__ import annotations

import time
from typing import Any

from bg_helpers import World

from bridge.core import grants as grants_mod
from bridge.http import pinned_session
from pacs_devstack import demo_data
from pacs_devstack import keycloak as kc
from pacs_devstack.kc_login import client_for, fresh_totp
from pacs_devstack.realm import AD_REALM

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
REQUESTER = "card.liam"  # a Cardiology-only cardiologist (emergency capability)


def _kc_token(w: World, username: str, mfa: bool = True) -> str:
    user = demo_data.user(username)
    otp = fresh_totp(user["totp_secret"], f"{AD_REALM}/{username}") if mfa else None
    # a password-only login as tests/integration/tokens/test_exchange.py makes it (the bridge's client;
    # the viewer's would ask the account without OTP to enrol one)
    login = client_for(w.stack, AD_REALM, "pacs-viewer" if mfa else "pacs-bridge").login(
        username, user["password"], otp=otp, acr_values="mfa" if mfa else None)
    return login.access_token


def _body(target_kind: str, target: str) -> dict[str, str]:
    return {"target_kind": target_kind, "target": target, "reason": "Cardiac arrest in ED, priors needed",
            "purpose_of_use": "BTG"}


def _exchange(w: World, token: str, purpose: str | None = None) -> Any:
    data = {"grant_type": EXCHANGE, "client_id": "pacs-viewer", "subject_token": token, "subject_token_type": AT}
    if purpose:
        data["purpose_of_use"] = purpose
    return pinned_session(w.ca).post(w.origin + "/token", data=data, timeout=30)


def test_a_viewer_breaks_the_glass_with_a_fresh_mfa_token(bg_world: World, expire_after: Any) -> None:
    w = bg_world
    expire_after(w.ids[REQUESTER])
    http = pinned_session(w.ca)
    patient = f"BGAPI-{time.time_ns() % 10**9}"
    study = w.upload(patient, "Emergency")
    other = w.upload(patient + "x", "Emergency")

    # no second factor: refused before anything else is said
    weak = _kc_token(w, kc.NO_OTP_USER, mfa=False)
    r = http.post(w.origin + "/break-glass", json=_body("patient", patient), timeout=30,
                  headers={"Authorization": f"Bearer {weak}"})
    assert r.status_code == 401 and r.json()["error"] == "insufficient_user_authentication", r.text

    token = _kc_token(w, REQUESTER)
    # BTG before any grant: refused at the exchange
    assert _exchange(w, token, "BTG").status_code == 400
    r = http.post(w.origin + "/break-glass", json={**_body("patient", patient), "purpose_of_use": "TREAT"},
                  timeout=30, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400
    r = http.post(w.origin + "/break-glass", json=_body("patient", patient), timeout=30,
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["target"] == {"kind": "patient", "value": patient} and grant["review"]["state"] == "open"

    answer = _exchange(w, token, "BTG")
    assert answer.status_code == 200, answer.text
    pacs_token = answer.json()["access_token"]
    claims = w.services.token_service.verify_own(pacs_token)
    assert claims is not None
    (bg,) = [g for g in grants_mod.from_claims(claims) if g.kind == "break-glass"]
    assert bg.patients == frozenset({patient})
    assert [p["code"] for p in claims["extensions"]["ihe_iua"]["purpose_of_use"]] == ["BTG"]
    orthanc = w.stack["orthanc"]["url"]
    auth = {"Authorization": f"Bearer {pacs_token}"}
    assert http.get(f"{orthanc}/studies/{study['study_id']}", headers=auth, timeout=30).status_code == 200
    assert http.get(f"{orthanc}/studies/{other['study_id']}", headers=auth, timeout=30).status_code == 403

    # close the item (an auditor's PACS token), so the queue is as it was
    auditor = w.pacs_token("comp.nils")
    r = http.post(f"{w.origin}/break-glass/reviews/{grant['id']}", timeout=30,
                  json={"verdict": "justified", "comment": "cardiac arrest confirmed"},
                  headers={"Authorization": f"Bearer {auditor}"})
    assert r.status_code == 200, r.text
