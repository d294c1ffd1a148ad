"""External shares against the real stack (issue 14, "Tests"): rad.alice (Keycloak login with
password + TOTP, token exchange at the stack's bridge) shares a study with an outside recipient; the
recipient opens the link at the stack's share endpoint and enters the passcode; the bridge reads the
study from the real Orthanc (through its plugin, with a one-study token of its own) and serves it
de-identified.  Wrong passcode, lockout, expiry, last use, revocation, a study outside de-identification
policy, and the ways around each."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Any

import pytest
from pydicom import dcmread
from share_helpers import ShareStack

pytestmark = pytest.mark.integration

HEALTH_CARE = "GDPR Art. 6(1)(e) + Art. 9(2)(h): provision of health care"
RESEARCH = "GDPR Art. 6(1)(e) + Art. 9(2)(j): scientific research with safeguards (Art. 89)"
PARTNER = {"type": "external", "name": "Dr. Eve Second", "institution": "Northgate University Hospital",
           "email": "eve@northgate-uh.example", "country": "DE"}
RESEARCHER = {"type": "external", "name": "Prof. Rae Search", "institution": "Imaging Research Lab",
              "email": "rae@imaging-research.example", "country": "DE"}
COOKIE = "__Host-pacs-share"


@pytest.fixture(scope="module")
def alice(share_stack: ShareStack) -> str:
    return share_stack.login_token("rad.alice")


@pytest.fixture(scope="module")
def study(share_stack: ShareStack) -> dict[str, Any]:
    return share_stack.upload("SHAREEXT^PATIENT", department="Radiology", instances=3)


def create(s: ShareStack, token: str, body: dict[str, Any]) -> Any:
    return s.http().post(s.bridge + "/shares", json=body, timeout=60, headers={"Authorization": f"Bearer {token}"})


def research(study_uid: str, **over: Any) -> dict[str, Any]:
    return {"study_uid": study_uid, "recipient": RESEARCHER, "purpose": "HRESCH", "legal_basis": RESEARCH,
            "lifetime": "1h", "max_uses": 5, "permissions": ["view", "download"], **over}


def second_opinion(study_uid: str, **over: Any) -> dict[str, Any]:
    return {"study_uid": study_uid, "recipient": PARTNER, "purpose": "TREAT", "legal_basis": HEALTH_CARE,
            "lifetime": "1h", "max_uses": 20, "permissions": ["view"], **over}


def open_link(s: ShareStack, link: str, passcode: str | None, http: Any = None, **kw: Any) -> Any:
    http = http or s.http()
    data = {"passcode": passcode} if passcode is not None else {}
    return http.post(link, data=data, allow_redirects=False, timeout=60, **kw)


def zip_of(s: ShareStack, share: dict[str, Any]) -> list[Any]:
    http = s.http()
    assert open_link(s, share["link"], share["passcode"], http).status_code == 303
    r = http.get(share["link"].rsplit("/", 1)[0] + "/s/study.zip", timeout=120)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip", r.text[:300]
    z = zipfile.ZipFile(io.BytesIO(r.content))
    return [(z.read(n), dcmread(io.BytesIO(z.read(n)))) for n in sorted(z.namelist())]


def test_external_share_serves_the_study_deidentified(share_stack: ShareStack, alice: str,
                                                      study: dict[str, Any]) -> None:
    s = share_stack
    r = create(s, alice, research(study["study_uid"]))
    assert r.status_code == 201, r.text[:500]
    share = r.json()
    assert share["link"].startswith(s.bridge + "/share/") and share["passcode"]
    first = zip_of(s, share)
    assert len(first) == 3
    originals = {study["study_uid"], study["series_uid"], *study["sops"]}
    for raw, ds in first:
        assert b"SHAREEXT" not in raw and study["patient_id"].encode() not in raw
        assert not any(uid.encode() in raw for uid in originals)
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID.startswith("2.25.")
    assert len({ds.StudyInstanceUID for _, ds in first}) == 1  # consistent within the share
    assert len({ds.SOPInstanceUID for _, ds in first}) == 3
    other = create(s, alice, research(study["study_uid"])).json()
    again = zip_of(s, other)
    assert again[0][1].StudyInstanceUID != first[0][1].StudyInstanceUID  # different across shares

    page = s.http()
    assert open_link(s, share["link"], share["passcode"], page).status_code == 303
    text = page.get(share["link"].rsplit("/", 1)[0] + "/s/", timeout=60).text
    assert "SHAREEXT" not in text and study["sops"][0] not in text and first[0][1].SOPInstanceUID in text

    rows = s.services.audit_store.query(types=["share.created", "share.used", "share.exported"],
                                        study=study["study_uid"])
    kinds = [r["type"] for r in rows]
    assert {"share.created", "share.used", "share.exported"} <= set(kinds)
    exported = next(r for r in rows if r["type"] == "share.exported")
    assert '"purpose_of_use":"HRESCH"' in exported["body"] and RESEARCH in exported["body"]
    assert "Prof. Rae Search" in exported["body"]


def test_wrong_passcode_and_lockout_after_five(share_stack: ShareStack, alice: str, study: dict[str, Any]) -> None:
    s = share_stack
    share = create(s, alice, second_opinion(study["study_uid"])).json()
    for _ in range(4):
        assert open_link(s, share["link"], "AAAA-BBBB-CCCC").status_code == 401
    assert open_link(s, share["link"], "AAAA-BBBB-CCCC").status_code == 429
    assert open_link(s, share["link"], share["passcode"]).status_code == 429  # locked, even the right one
    renewed = s.http().post(f"{s.bridge}/shares/{share['id']}/passcode", timeout=60,
                            headers={"Authorization": f"Bearer {alice}"}).json()
    assert open_link(s, share["link"], share["passcode"]).status_code == 401
    assert open_link(s, share["link"], renewed["passcode"]).status_code == 303
    rows = s.services.audit_store.query(types=["share.passcode_failed", "share.locked_out"])
    assert any(share["id"] in r["body"] for r in rows if r["type"] == "share.locked_out")


def test_expiry_last_use_and_revocation(share_stack: ShareStack, alice: str, study: dict[str, Any]) -> None:
    s = share_stack
    once = create(s, alice, second_opinion(study["study_uid"], max_uses=1)).json()
    assert open_link(s, once["link"], once["passcode"]).status_code == 303
    assert open_link(s, once["link"], once["passcode"]).status_code == 410

    short = create(s, alice, second_opinion(study["study_uid"], lifetime=3)).json()
    time.sleep(4)
    assert open_link(s, short["link"], short["passcode"]).status_code == 410

    live = create(s, alice, second_opinion(study["study_uid"])).json()
    http = s.http()
    assert open_link(s, live["link"], live["passcode"], http).status_code == 303
    base = live["link"].rsplit("/", 1)[0]
    assert http.get(base + "/s/", timeout=60).status_code == 200
    r = s.http().delete(f"{s.bridge}/shares/{live['id']}", timeout=60, headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 200
    assert http.get(base + "/s/", timeout=60).status_code == 401  # the open session ends at once
    assert open_link(s, live["link"], live["passcode"]).status_code == 410  # a revoked link


def test_external_share_without_deidentification_is_refused(share_stack: ShareStack, alice: str,
                                                           study: dict[str, Any]) -> None:
    r = create(share_stack, alice, second_opinion(study["study_uid"], deidentify=False))
    assert r.status_code == 403 and "de-identification" in r.json()["error_description"]


def test_attacks_on_the_share_endpoint(share_stack: ShareStack, alice: str, study: dict[str, Any]) -> None:
    s = share_stack
    share = create(s, alice, second_opinion(study["study_uid"])).json()
    # a passcode in the query string is ignored: not a guess, not a session
    r = s.http().post(share["link"] + "?passcode=" + share["passcode"], allow_redirects=False, timeout=60)
    assert r.status_code == 400 and COOKIE not in r.headers.get("Set-Cookie", "")
    # repeated passcode fields
    r = s.http().post(share["link"], data=[("passcode", share["passcode"]), ("passcode", "x")],
                      allow_redirects=False, timeout=60)
    assert r.status_code == 400
    # the share token is no PACS token: Orthanc's plugin refuses it (audience)
    http = s.http()
    assert open_link(s, share["link"], share["passcode"], http).status_code == 303
    token = http.cookies.get(COOKIE)
    assert token
    r = s.http().get(f"{s.orthanc}/studies/{study['study_id']}", timeout=60,
                     headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (401, 403)
    # nor is it accepted by the sharers' API
    assert s.http().get(s.bridge + "/shares", timeout=60,
                        headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # and a PACS token is no share session
    other = s.http()
    other.cookies.set(COOKIE, alice, domain=share["link"].split("/")[2].split(":")[0])
    assert other.get(share["link"].rsplit("/", 1)[0] + "/s/", timeout=60).status_code == 401
    # view-only share: no ZIP
    assert http.get(share["link"].rsplit("/", 1)[0] + "/s/study.zip", timeout=60).status_code == 403
    # a link with one character changed names no share
    bad = share["link"][:-1] + ("A" if share["link"][-1] != "A" else "B")
    assert open_link(s, bad, share["passcode"]).status_code == 404
