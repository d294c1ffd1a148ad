"""Per-role grants on the real Orthanc 1.10.1 + bridge plugin: the holes of the merged token, end to end.

Tokens carry one grant per role (``grants`` claim, token format 2), with the demo policy's roles
(examples/policy.yaml): ``clinician`` views everywhere, ``cardiologist`` views and downloads Cardiology
only.  The uploaded studies: P-001 Radiology, P-002 Cardiology, P-003 Emergency, P-004 Radiology
(Clinic North) -- more outside Cardiology than inside.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.core import token_format
from bridge.core.permissions import Permission as P
from bridge.policy.loader import load_policy
from pacs_devstack.pacs_double import dicom_instance

pytestmark = pytest.mark.integration
POLICY = load_policy(Path(__file__).parents[3] / "examples" / "policy.yaml")
_n = itertools.count(1)


def role(name: str, **scope: list[str]) -> tuple[str, list[str], dict[str, list[str]]]:
    """The demo policy's role as the token service issues it (expanded permissions; the policy's
    scope unless one is given, as an assignment row may carry its own)."""
    r = POLICY.roles[name]
    return name, sorted(p.value for p in r.effective_permissions), scope or r.scope()


def token(pacs: Any, *grants: tuple[str, list[str], dict[str, list[str]]], **kw: Any) -> str:
    return pacs.bridge.token(roles=[g[0] for g in grants], grants=grants, **kw)


def _uids(resp: Any) -> set[str]:
    return {d.get("0020000D", {}).get("Value", ["?"])[0] for d in resp.json()}


def test_the_demo_policy_scopes_cardiologists(pacs: Any) -> None:
    assert role("cardiologist")[2] == {"departments": ["Cardiology"]}
    assert role("clinician")[2] == {} and "view" in role("clinician")[1]


def test_a_scoped_only_cardiologist_sees_cardiology_only(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    cardio = token(pacs, role("cardiologist"), username="card.liam")
    own, others = studies["P-002"], [studies[p] for p in ("P-001", "P-003", "P-004")]
    assert pacs.get(f"/studies/{own['study']}", cardio).status_code == 200
    assert pacs.get(f"/studies/{own['study']}/archive", cardio).status_code == 200
    assert pacs.get(f"/dicom-web/studies?StudyInstanceUID={own['study_uid']}", cardio).status_code == 200
    for s in others:
        for path in (f"/studies/{s['study']}", f"/instances/{s['instance']}/preview", f"/patients/{s['patient']}",
                     f"/dicom-web/studies?StudyInstanceUID={s['study_uid']}"):
            assert pacs.get(path, cardio).status_code == 403, path
    # lists and QIDO answer, filtered by the plugin to the studies the cardiologist grant covers
    listed = pacs.get("/studies", cardio)
    assert listed.status_code == 200 and own["study"] in listed.json()
    assert not {s["study"] for s in others} & set(listed.json())
    qido = pacs.get("/dicom-web/studies", cardio)
    assert qido.status_code == 200 and own["study_uid"] in _uids(qido)
    assert not {s["study_uid"] for s in others} & _uids(qido)
    patients = pacs.get("/patients", cardio)
    assert patients.status_code == 200 and not {s["patient"] for s in others if s["patient"] != own["patient"]} \
        & set(patients.json())


def test_an_unscoped_role_keeps_its_reach_beside_a_scoped_one(
        pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    """card.ines: clinician (view everywhere) + cardiologist (view, download in Cardiology).  Merged, the
    cardiologist's scope restricted her view to Cardiology and lists were refused."""
    ines = token(pacs, role("clinician"), role("cardiologist"), username="card.ines")
    for s in studies.values():
        assert pacs.get(f"/studies/{s['study']}", ines).status_code == 200, s["department"]
    listed = pacs.get("/studies", ines)
    assert listed.status_code == 200 and {s["study"] for s in studies.values()} <= set(listed.json())
    qido = pacs.get("/dicom-web/studies", ines)
    assert qido.status_code == 200 and {s["study_uid"] for s in studies.values()} <= _uids(qido)
    # ... and download only where the cardiologist grant covers: never lent to the clinician grant
    assert pacs.get(f"/studies/{studies['P-002']['study']}/archive", ines).status_code == 200
    for pid in ("P-001", "P-003", "P-004"):
        s = studies[pid]
        assert pacs.get(f"/studies/{s['study']}/archive", ines).status_code == 403, pid
        assert pacs.get(f"/instances/{s['instance']}/file", ines).status_code == 403, pid
        assert pacs.request("HEAD", f"/instances/{s['instance']}/file", ines).status_code == 403, pid
    assert pacs.request("POST", "/tools/create-archive", ines, json={"Resources": [studies["P-002"]["study"]]}
                        ).status_code == 403  # a bulk tool names no study the filter could check


def test_two_scoped_roles_do_not_lend_each_other_permissions(
        pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    """Delete in Cardiology (an admin role scoped there) and view in Radiology: no delete in Radiology."""
    uid = f"1.2.826.0.1.3680043.10.1137.7{int(time.time())}"
    up = pacs.bridge.token([P.UPLOAD, P.VIEW])
    data = dicom_instance(patient_id="GR-DEL", patient_name="Del^Me", study_uid=uid, series_uid=uid + ".1",
                          sop_uid=uid + ".1.1", department="Cardiology", institution="Hospital Test")
    throwaway = pacs.request("POST", "/instances", up, data=data).json()["ParentStudy"]
    two = token(pacs, role("pacs-admin", departments=["Cardiology"]), role("clinician", departments=["Radiology"]))
    rad = studies["P-001"]
    for method, path in (("DELETE", f"/studies/{rad['study']}"), ("DELETE", f"/instances/{rad['instance']}"),
                         ("DELETE", f"/patients/{rad['patient']}"), ("GET", f"/studies/{studies['P-003']['study']}"),
                         ("POST", "/tools/bulk-delete")):
        kwargs = {"json": {"Resources": [rad["study"]]}} if method == "POST" else {}
        assert pacs.request(method, path, two, **kwargs).status_code == 403, (method, path)
    assert pacs.get(f"/studies/{rad['study']}", two).status_code == 200  # the Radiology view grant
    listed = set(pacs.get("/studies", two).json())  # filtered: Radiology (view) and Cardiology (admin holds view)
    assert rad["study"] in listed and studies["P-003"]["study"] not in listed
    assert pacs.get(f"/studies/{rad['study']}", pacs.bridge.token([P.VIEW])).status_code == 200  # still there
    assert pacs.request("DELETE", f"/studies/{throwaway}", two).status_code == 200  # delete in Cardiology


def test_an_upload_needs_one_grant_covering_instance_and_study(
        pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    """Upload in Radiology (technologist) + view in Cardiology (cardiologist): no instance into Cardiology."""
    tech = token(pacs, role("technologist", departments=["Radiology"]), role("cardiologist"))
    viewer = pacs.bridge.token([P.VIEW])

    def stored(sop: str) -> bool:
        found = pacs.request("POST", "/tools/lookup", viewer, data=sop).json()
        return any(f["Type"] == "Instance" for f in found)

    def instance(study_uid: str, dept: str, patient: str) -> tuple[bytes, str]:
        sop = f"{study_uid}.8{int(time.time())}.{next(_n)}"
        return dicom_instance(patient_id=patient, patient_name="Gr^Up", study_uid=study_uid,
                              series_uid=sop + ".0", sop_uid=sop, department=dept,
                              institution="Hospital Test"), sop

    data, sop = instance(studies["P-002"]["study_uid"], "Cardiology", "P-002")  # the Cardiology study
    pacs.request("POST", "/instances", tech, data=data)
    assert not stored(sop)
    data, sop = instance(studies["P-002"]["study_uid"], "Radiology", "P-002")  # claims Radiology, joins it
    pacs.request("POST", "/instances", tech, data=data)
    assert not stored(sop)
    data, sop = instance(studies["P-001"]["study_uid"], "Radiology", "P-001")
    assert pacs.request("POST", "/instances", tech, data=data).status_code == 200 and stored(sop)


def test_audit_names_the_grant_that_allowed_and_why_none_fit(
        pacs: Any, studies: dict[str, dict[str, str]], audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    ines = token(pacs, role("clinician"), role("cardiologist"), subject="u-grant-audit", username="grant.audit")
    assert pacs.get(f"/studies/{studies['P-002']['study']}/archive", ines).status_code == 200
    assert pacs.get(f"/studies/{studies['P-003']['study']}", ines).status_code == 200
    assert pacs.get(f"/studies/{studies['P-003']['study']}/archive", ines).status_code == 403

    def mine(e: dict[str, Any]) -> bool:
        return (e["actor"] or {}).get("username") == "grant.audit"

    downloaded = audit_events("study.downloaded", mine)
    assert downloaded and "by role cardiologist (departments Cardiology)" in downloaded[0]["details"]["reason"]
    viewed = audit_events("study.accessed", lambda e: mine(e) and e["details"]["permission"] == "view")
    assert viewed and "by role clinician (everywhere)" in viewed[0]["details"]["reason"]
    denied = audit_events("access.denied", mine)
    assert denied and "role cardiologist (departments Cardiology) does not cover department Emergency" \
        in denied[0]["details"]["reason"]


@pytest.mark.parametrize("grants", [
    [{"kind": "role", "role": "x", "permissions": ["view", "download"], "scope": {"wards": ["A"]}}],
    [{"kind": "role", "role": "x", "permissions": ["view", "download"], "scope": {"departments": "Radiology"}}],
    [{"kind": "superuser", "role": "x", "permissions": ["view", "download"], "scope": {}}],
    [{"kind": "role", "role": "x", "permissions": "view download", "scope": {}}],
    [{"kind": "break-glass", "role": None, "permissions": ["view", "download"], "scope": {}, "exp": 1}],
    {"kind": "role", "role": "x", "permissions": ["view"], "scope": {}},
    "everything", None,
])
def test_malformed_or_expired_grants_allow_nothing_on_the_real_plugin(
        pacs: Any, studies: dict[str, dict[str, str]], grants: Any) -> None:
    claims = pacs.bridge.claims([P.VIEW, P.DOWNLOAD])
    claims["grants"] = grants
    claims["permissions"] = ["view", "download"]  # the display union never decides
    bad = pacs.bridge.ring.sign(claims)
    own = studies["P-001"]
    for path in (f"/studies/{own['study']}", f"/instances/{own['instance']}/file", "/studies",
                 f"/dicom-web/studies?StudyInstanceUID={own['study_uid']}"):
        assert pacs.get(path, bad).status_code == 403, (grants, path)


def test_a_break_glass_grant_ends_at_its_own_exp_inside_a_cached_token(
        pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    s = studies["P-003"]
    claims = pacs.bridge.claims([P.VIEW])
    claims["grants"] = [{"kind": "break-glass", "role": None, "permissions": ["view"],
                         "scope": {"studies": [s["study_uid"]]}, "exp": int(time.time()) + 3}]
    btg = pacs.bridge.ring.sign(claims)
    assert pacs.get(f"/studies/{s['study']}", btg).status_code == 200  # verified and cached now
    assert pacs.get(f"/studies/{studies['P-001']['study']}", btg).status_code == 403  # one study only
    time.sleep(4)
    assert pacs.get(f"/studies/{s['study']}", btg).status_code == 403


def test_a_format_1_token_is_refused_and_logged(pacs: Any, orthanc: dict[str, Any],
                                                studies: dict[str, dict[str, str]]) -> None:
    """Format 1 merged permissions and scopes; an old bridge's token must not be read by the new rules."""
    claims = pacs.bridge.claims([P.VIEW])
    claims.pop("grants")
    claims.update({"permissions": ["view"], "scopes": {"departments": [], "institutions": []},
                   token_format.CLAIM: 1})
    old = pacs.bridge.ring.sign(claims)
    assert pacs.get(f"/studies/{studies['P-001']['study']}", old).status_code == 403
    deadline = time.monotonic() + 10
    while "token format 1 not understood" not in Path(orthanc["log"]).read_text(errors="replace"):
        assert time.monotonic() < deadline, "the refused format was not logged in Orthanc's log"
        time.sleep(0.3)


def test_the_claims_as_issued_are_format_2(pacs: Any) -> None:
    claims = pacs.bridge.claims([P.VIEW], departments=["Radiology"])
    assert claims[token_format.CLAIM] == 2 and "scopes" not in claims
    assert json.loads(json.dumps(claims["grants"])) == [
        {"kind": "role", "role": "test-role", "permissions": ["view"], "scope": {"departments": ["Radiology"]}}]
