"""Adversarial review of the Orthanc side, against the real Orthanc 1.10.1 + DICOMweb plugin + bridge plugin.

Each test is one way around a department scope that worked before its fix:

* the same StudyInstanceUID (or SOPInstanceUID) stored under two patients is two Orthanc studies; the
  DICOMweb plugin answers with both, so the scope check must judge every copy, not the first found;
* ``/{studies,series,instances}/{id}/patient`` answers with the *patient*, whose other studies (another
  department's) it lists: it needs scope over every study of that patient, like ``/patients/{id}``;
* the study resolver's cache must follow Orthanc: a study deleted and stored again under another
  department, or a patient gaining a study of another department, must not be judged on the old answer.

A Radiology-scoped token may see Radiology studies only.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import requests

from bridge.core.permissions import Permission as P
from bridge.http import pinned_session
from pacs_devstack.pacs_double import dicom_instance

pytestmark = pytest.mark.integration
ROOT = "1.2.826.0.1.3680043.10.1137.66"
_n = itertools.count(int(time.time()) % 100000 * 100)


def _store(pacs: Any, token: str, patient: str, study_uid: str, series: str, sop: str, dept: str,
           name: str = "Adv^Test") -> dict[str, Any]:
    data = dicom_instance(patient_id=patient, patient_name=name, study_uid=study_uid, series_uid=series,
                          sop_uid=sop, department=dept, institution="Hospital Test")
    resp = pacs.request("POST", "/instances", token, data=data, headers={"Content-Type": "application/dicom"})
    assert resp.status_code == 200, resp.status_code
    answer: dict[str, Any] = resp.json()
    assert answer.get("ID"), answer  # stored, not discarded
    return answer


def _uid() -> str:
    return f"{ROOT}.{next(_n)}"


def _refused_or_without(resp: Any, secret: str) -> bool:
    return resp.status_code in (403, 404) or (resp.status_code == 200 and secret not in resp.text)


@pytest.fixture(scope="module")
def admin(pacs: Any) -> str:
    return pacs.bridge.token(list(P), subject="u-adv-admin", username="adv.admin")


@pytest.fixture(scope="module")
def rad(pacs: Any) -> str:
    return pacs.bridge.token([P.VIEW, P.DOWNLOAD, P.UPLOAD], departments=["Radiology"], subject="u-adv-rad",
                             username="adv.rad")


def test_duplicate_study_uid_is_judged_on_every_copy(pacs: Any, studies: Any, admin: str, rad: str) -> None:
    dup = _uid()
    _store(pacs, admin, f"DUP-A-{dup[-6:]}", dup, f"{dup}.1", f"{dup}.1.1", "Radiology", "Dup^Visible")
    _store(pacs, admin, f"DUP-B-{dup[-6:]}", dup, f"{dup}.2", f"{dup}.2.1", "Cardiology", "Dup^Secret")
    for path in (f"/dicom-web/studies?StudyInstanceUID={dup}", f"/dicom-web/series?StudyInstanceUID={dup}",
                 f"/dicom-web/instances?0020000D={dup}", f"/dicom-web/studies/{dup}/series",
                 f"/dicom-web/studies/{dup}/instances", f"/dicom-web/studies/{dup}/metadata",
                 f"/dicom-web/studies/{dup}/series/{dup}.2/metadata",
                 f"/dicom-web/studies/{dup}/series/{dup}.2/instances/{dup}.2.1",
                 f"/dicom-web/studies/{dup}/series/{dup}.2/instances/{dup}.2.1/frames/1"):
        resp = pacs.get(path, rad)
        assert _refused_or_without(resp, "Secret") and not (resp.status_code == 200 and b"DICM" in resp.content), \
            (path, resp.status_code)


def test_duplicate_sop_uid_is_judged_on_every_copy(pacs: Any, studies: Any, admin: str, rad: str) -> None:
    visible, hidden = _uid(), _uid()
    sop = f"{visible}.5.5"
    _store(pacs, admin, f"SOP-A-{visible[-6:]}", visible, f"{visible}.1", sop, "Radiology")
    _store(pacs, admin, f"SOP-B-{hidden[-6:]}", hidden, f"{hidden}.1", sop, "Cardiology", "Sop^Secret")
    path = (f"/wado?requestType=WADO&studyUID={hidden}&seriesUID={hidden}.1&objectUID={sop}"
            "&contentType=application/dicom")
    resp = pacs.get(path, rad)
    assert resp.status_code in (403, 404) and b"Secret" not in resp.content, resp.status_code


def test_patient_of_an_own_study_needs_scope_over_the_whole_patient(pacs: Any, studies: Any, rad: str) -> None:
    """A scoped uploader files an in-scope study under another department's PatientID (Orthanc merges it into
    that patient); the patient resource, reached through the own study, must stay refused."""
    uid = _uid()
    mine = _store(pacs, rad, "P-002", uid, f"{uid}.1", f"{uid}.1.1", "Radiology", "Guess^Who")
    cardiology_study = studies["P-002"]["study"]
    assert mine["ParentPatient"] == studies["P-002"]["patient"]  # merged into the Cardiology patient
    assert pacs.get(f"/studies/{mine['ParentStudy']}", rad).status_code == 200  # the own study stays visible
    for path in (f"/studies/{mine['ParentStudy']}/patient", f"/series/{mine['ParentSeries']}/patient",
                 f"/instances/{mine['ID']}/patient", f"/studies/{mine['ParentStudy']}/patient/",
                 f"/patients/{mine['ParentPatient']}", f"/patients/{mine['ParentPatient']}/studies"):
        resp = pacs.get(path, rad)
        assert resp.status_code == 403 and cardiology_study not in resp.text, (path, resp.status_code)


def _eventually_refused(pacs: Any, path: str, token: str, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status = pacs.get(path, token).status_code
        if status == 403 or time.monotonic() > deadline:
            return int(status)
        time.sleep(0.2)


def test_cached_scope_follows_a_study_stored_again_in_another_department(pacs: Any, studies: Any, admin: str,
                                                                          rad: str) -> None:
    uid = _uid()
    first = _store(pacs, admin, f"CACHE-{uid[-6:]}", uid, f"{uid}.1", f"{uid}.1.1", "Radiology")
    for path in (f"/studies/{first['ParentStudy']}", f"/instances/{first['ID']}/simplified-tags",
                 f"/dicom-web/studies/{uid}/metadata"):
        assert pacs.get(path, rad).status_code == 200, path  # now in the resolver's cache
    assert pacs.request("DELETE", f"/studies/{first['ParentStudy']}", admin).status_code == 200
    again = _store(pacs, admin, f"CACHE-{uid[-6:]}", uid, f"{uid}.1", f"{uid}.1.1", "Cardiology", "Cache^Secret")
    assert again["ParentStudy"] == first["ParentStudy"]  # same Orthanc ids: only the department changed
    for path in (f"/studies/{again['ParentStudy']}", f"/instances/{again['ID']}/simplified-tags",
                 f"/dicom-web/studies/{uid}/metadata"):
        assert _eventually_refused(pacs, path, rad) == 403, path


def test_cached_patient_follows_a_new_study_of_another_department(pacs: Any, studies: Any, admin: str,
                                                                  rad: str) -> None:
    own, other = _uid(), _uid()
    patient = f"PAT-{own[-6:]}"
    first = _store(pacs, admin, patient, own, f"{own}.1", f"{own}.1.1", "Radiology")
    assert pacs.get(f"/patients/{first['ParentPatient']}/studies", rad).status_code == 200  # cached: one study
    _store(pacs, admin, patient, other, f"{other}.1", f"{other}.1.1", "Cardiology", "Later^Secret")
    for path in (f"/patients/{first['ParentPatient']}/studies", f"/patients/{first['ParentPatient']}"):
        assert _eventually_refused(pacs, path, rad) == 403, path


def test_create_dicom_cannot_copy_another_departments_patient(pacs: Any, studies: Any, admin: str,
                                                              rad: str) -> None:
    """``/tools/create-dicom`` with ``Parent`` = a patient makes Orthanc copy that patient's tags (name, birth
    date ...) from one of its instances into a new study: an in-scope department tag must not let a scoped
    uploader read another department's patient that way (the patient's Orthanc id is a hash of its PatientID)."""
    uid = _uid()
    theirs = _store(pacs, admin, f"CD-{uid[-6:]}", uid, f"{uid}.1", f"{uid}.1.1", "Cardiology", "Secret^Name")
    in_scope = {"InstitutionalDepartmentName": "Radiology", "InstitutionName": "Hospital Test"}
    for parent in (theirs["ParentPatient"], theirs["ParentStudy"], theirs["ParentSeries"]):
        resp = pacs.request("POST", "/tools/create-dicom", rad, json={"Parent": parent, "Tags": in_scope})
        created = resp.json().get("ID") if resp.status_code == 200 else None
        if created:
            tags = pacs.get(f"/instances/{created}/simplified-tags", rad)
            assert "Secret^Name" not in tags.text, (parent, "leaked")
        assert not created, (parent, resp.status_code, resp.text[:200])
    # a patient of the token's own department may still get new instances
    mine = _uid()
    own = _store(pacs, admin, f"CD-{mine[-6:]}", mine, f"{mine}.1", f"{mine}.1.1", "Radiology", "Own^Name")
    resp = pacs.request("POST", "/tools/create-dicom", rad, json={"Parent": own["ParentPatient"], "Tags": in_scope})
    assert resp.status_code == 200 and resp.json().get("ID"), resp.text[:200]
    assert "Own^Name" in pacs.get(f"/instances/{resp.json()['ID']}/simplified-tags", rad).text


def _job_done(pacs: Any, job: str, token: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while pacs.get(f"/jobs/{job}", token).json().get("State") != "Success":
        assert time.monotonic() < deadline, "the archive job never finished"
        time.sleep(0.2)


def test_scoped_admin_gets_no_server_wide_reach(pacs: Any, studies: Any, admin: str) -> None:
    """A department-scoped token that holds admin (+ download) must not read another department through the
    server-wide admin routes: a job's output archive, the job list, a Lua script."""
    card = studies["P-002"]["study"]
    job = pacs.request("POST", f"/studies/{card}/archive", admin, json={"Asynchronous": True}).json()["ID"]
    _job_done(pacs, job, admin)
    assert pacs.get(f"/jobs/{job}/archive", admin).status_code == 200  # the output exists
    scoped = pacs.bridge.token([P.ADMIN, P.DOWNLOAD, P.VIEW], departments=["Radiology"])
    assert pacs.get(f"/jobs/{job}/archive", scoped).status_code == 403
    assert pacs.get(f"/jobs/{job}", scoped).status_code == 403
    assert pacs.get("/jobs?expand", scoped).status_code == 403
    lua = f"print(RestApiGet('/studies/{card}'))"
    assert pacs.request("POST", "/tools/execute-script", scoped, data=lua).status_code == 403
    # ... while admin routes below an in-scope resource still work for it
    own = studies["P-001"]["study"]
    assert pacs.get(f"/studies/{own}/archive", scoped).status_code == 200


def test_upload_context_never_outlives_its_request_on_a_kept_alive_connection(pacs: Any, admin: str,
                                                                              rad: str) -> None:
    """One TCP connection is served by one Orthanc HTTP thread: an unscoped upload's context must not let the
    scoped request after it store out-of-scope content, and a refused request leaves no context behind."""
    with pinned_session(pacs.ca) as session:  # a CA bundle in the environment would replace session.verify
        def post(token: str | None, dept: str) -> Any:
            uid = _uid()
            data = dicom_instance(patient_id=f"KA-{uid[-6:]}", patient_name="Keep^Alive", study_uid=uid,
                                  series_uid=f"{uid}.1", sop_uid=f"{uid}.1.1", department=dept,
                                  institution="Hospital Test")
            headers = {"Content-Type": "application/dicom"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            return session.post(pacs.url + "/instances", data=data, headers=headers, timeout=15)

        assert post(admin, "Cardiology").json().get("ID")  # unscoped: stored
        refused = post(rad, "Cardiology")  # same thread, scoped: filtered out
        assert refused.status_code != 200 or not refused.json().get("ID"), refused.text[:200]
        assert post(None, "Radiology").status_code == 403
        assert post(pacs.bridge.token([P.VIEW]), "Radiology").status_code == 403
        assert post(rad, "Radiology").json().get("ID")
        refused = post(rad, "Emergency")
        assert refused.status_code != 200 or not refused.json().get("ID"), refused.text[:200]


def test_scoped_merge_cannot_pull_or_destroy_another_departments_study(pacs: Any, admin: str) -> None:
    """``/studies/{own}/merge`` names the other study in its body (the filter cannot see it): the job's copies
    of another department's instances are discarded, and with ``KeepSource: false`` the source survives."""
    own_uid, their_uid = _uid(), _uid()
    mine = _store(pacs, admin, f"MG-{own_uid[-6:]}", own_uid, f"{own_uid}.1", f"{own_uid}.1.1", "Radiology")
    theirs = _store(pacs, admin, f"MG-{their_uid[-6:]}", their_uid, f"{their_uid}.1", f"{their_uid}.1.1",
                    "Cardiology", "Merge^Secret")
    modifier = pacs.bridge.token([P.VIEW, P.MODIFY], departments=["Radiology"])
    pacs.request("POST", f"/studies/{mine['ParentStudy']}/merge", modifier,
                 json={"Resources": [theirs["ParentStudy"]], "KeepSource": False, "Synchronous": True})
    assert len(pacs.get(f"/studies/{theirs['ParentStudy']}/instances", admin).json()) == 1
    own_instances = pacs.get(f"/studies/{mine['ParentStudy']}/instances", modifier).json()
    assert len(own_instances) == 1
    tags = pacs.get(f"/studies/{mine['ParentStudy']}/instances-tags?simplify", modifier).text
    assert "Merge^Secret" not in tags


def test_odd_request_shapes_are_refused(pacs: Any, studies: Any) -> None:
    viewer = pacs.bridge.token([P.VIEW])
    own = studies["P-001"]
    for path in (f"/instances/{own['instance']}/file", f"/instances/{own['instance']}/file/",
                 f"/instances/{own['instance']}//file", f"/instances/{own['instance']}/fil%65",
                 f"/instance%73/{own['instance']}/file", f"/instances/{own['instance']};x/file",
                 f"/instances/{own['instance']}/file;x", f"/Instances/{own['instance']}/file",
                 f"/instances/{own['instance']}/attachments", "/a" * 20000):
        for method in ("GET", "HEAD"):
            try:
                status = pacs.request(method, path, viewer).status_code
            except requests.exceptions.ConnectionError:  # an SSLError too
                # over TLS, Orthanc's web server may close on an oversized request line before its
                # 414 reaches the client: no answer is a refusal as well
                assert len(path) > 10_000, path
                continue
            assert status in (400, 403, 404, 414), path
    # a method override is applied before the filter (Orthanc 1.10.1), so it is judged as what it becomes
    for method, path, headers in (("POST", f"/studies/{own['study']}?_method=DELETE", {}),
                                  ("POST", f"/studies/{own['study']}", {"X-HTTP-Method-Override": "DELETE"}),
                                  ("POST", "/modalities/evil", {"X-HTTP-Method-Override": "PUT"})):
        assert pacs.request(method, path, viewer, headers=headers, json={}).status_code == 403, path
    assert pacs.get(f"/studies/{own['study']}", viewer).status_code == 200


@pytest.mark.parametrize("value", [[], ["Radiology"], "Radiology", {"departments": "Radiology"},
                                   {"departments": ["Radiology", 5]}, {"departments": 0}, {"departments": ""},
                                   {"departments": {}}, {"department": ["Cardiology"]},
                                   {"departments": [], "institutions": [], "modalities": ["CT"]}])
def test_malformed_scopes_claim_matches_nothing_on_the_real_plugin(pacs: Any, studies: Any, value: Any) -> None:
    claims = pacs.bridge.claims([P.VIEW, P.DOWNLOAD, P.UPLOAD, P.ADMIN])
    claims["grants"][0]["scope"] = value  # the one grant's scope
    token = pacs.bridge.ring.sign(claims)
    own = studies["P-001"]
    for path in (f"/studies/{own['study']}", f"/instances/{own['instance']}/file", f"/patients/{own['patient']}",
                 f"/dicom-web/studies?StudyInstanceUID={own['study_uid']}", "/jobs"):
        assert pacs.get(path, token).status_code == 403, (value, path)
    for path in ("/studies", "/dicom-web/studies"):  # filtered listings: a scope that matches nothing lists nothing
        resp = pacs.get(path, token)
        assert resp.status_code == 403 or resp.json() == [], (value, path)
    uid = _uid()
    data = dicom_instance(patient_id=f"MS-{uid[-6:]}", patient_name="Mal^Formed", study_uid=uid,
                          series_uid=f"{uid}.1", sop_uid=f"{uid}.1.1", department="Radiology")
    resp = pacs.request("POST", "/instances", token, data=data, headers={"Content-Type": "application/dicom"})
    assert resp.status_code != 200 or not resp.json().get("ID"), (value, resp.text[:200])


def test_accept_headers_never_turn_a_view_route_into_a_file(pacs: Any, studies: Any) -> None:
    viewer = pacs.bridge.token([P.VIEW])
    u = studies["P-001"]["study_uid"]
    instance = f"/dicom-web/studies/{u}/series/{u}.1/instances/{u}.1.1"
    dicom = 'multipart/related; type="application/dicom"'
    wado = f"/wado?requestType=WADO&studyUID={u}&seriesUID={u}.1&objectUID={u}.1.1"
    for path, accept in ((wado, "application/dicom"),
                         (f"/dicom-web/studies/{u}/metadata", dicom), (instance + "/frames/1", dicom),
                         (instance + "/rendered", "application/dicom"), (instance + "/bulk/7fe00010", dicom),
                         (instance + "/metadata", "application/dicom")):
        resp = pacs.get(path, viewer, headers={"Accept": accept})
        assert b"DICM" not in resp.content, (path, accept, resp.status_code)
