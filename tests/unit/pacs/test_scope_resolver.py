"""The study resolver behind scope decisions (bridge.pacs.scopes.StudyResolver), with Orthanc's REST API
replaced by a dictionary: every copy of a duplicated UID is judged, ``/{level}/{id}/patient`` is judged on
the whole patient, and the cache follows Orthanc's changes (deleted, new study)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core import grants
from bridge.pacs import scopes
from bridge.pacs.gate import judge
from bridge.pacs.scopes import StudyResolver, Target

SCOPED = {"grants": [{"kind": "role", "role": "r", "permissions": ["view"], "scope": {"departments": ["Radiology"]}}]}


class FakeOrthanc:
    """studies: orthanc id -> (uid, patient id, department); one series + instance per study."""

    def __init__(self) -> None:
        self.studies: dict[str, tuple[str, str, str]] = {}
        self.sop: dict[str, list[str]] = {}  # SOP UID -> instance ids

    def add(self, sid: str, uid: str, patient: str, dept: str, sop: str = "") -> None:
        self.studies[sid] = (uid, patient, dept)
        if sop:
            self.sop.setdefault(sop, []).append(f"i-{sid}")

    def get(self, uri: str) -> Any:
        parts = uri.strip("/").split("/")
        if parts[0] == "studies" and len(parts) == 2:
            uid, patient, _ = self.studies[parts[1]]
            return {"MainDicomTags": {"StudyInstanceUID": uid}, "PatientMainDicomTags": {"PatientID": patient}}
        if parts[0] == "studies" and parts[2] == "instances":
            return [{"ID": f"i-{parts[1]}"}]
        if parts[0] == "studies" and parts[2] == "patient":
            return {"ID": f"p-{self.studies[parts[1]][1]}"}
        if parts[0] == "instances" and len(parts) == 2:
            return {"ParentSeries": f"se-{parts[1][2:]}"}
        if parts[0] == "instances" and parts[2] == "patient":
            return {"ID": f"p-{self.studies[parts[1][2:]][1]}"}
        if parts[0] == "instances" and parts[2] == "simplified-tags":
            return {"InstitutionalDepartmentName": self.studies[parts[1][2:]][2]}
        if parts[0] == "series":
            return {"ParentStudy": parts[1][3:]}
        if parts[0] == "patients":
            return {"Studies": [s for s, v in self.studies.items() if f"p-{v[1]}" == parts[1]]}
        raise KeyError(uri)

    def post(self, uri: str, body: str) -> Any:
        assert uri == "/tools/lookup"
        out = [{"Type": "Study", "ID": s} for s, v in self.studies.items() if v[0] == body]
        return out + [{"Type": "Instance", "ID": i} for i in self.sop.get(body, [])]


def _resolver(fake: FakeOrthanc) -> StudyResolver:
    return StudyResolver(fake.get, fake.post, ttl=300)


def test_every_copy_of_a_duplicated_study_uid_is_judged() -> None:
    fake = FakeOrthanc()
    fake.add("a", "1.2.3", "PA", "Radiology")
    fake.add("b", "1.2.3", "PB", "Cardiology")  # same StudyInstanceUID, another patient
    r = _resolver(fake)
    assert {s.department for s in r.studies(Target("study-uid", "1.2.3"))} == {"Radiology", "Cardiology"}
    verdict = judge(SCOPED, "GET", "/dicom-web/studies", {"StudyInstanceUID": "1.2.3"}, r.studies)
    assert not verdict.allow


def test_every_copy_of_a_duplicated_sop_uid_is_judged() -> None:
    fake = FakeOrthanc()
    fake.add("a", "1.2.3", "PA", "Radiology", sop="9.9")
    fake.add("b", "1.2.4", "PB", "Cardiology", sop="9.9")
    r = _resolver(fake)
    assert {s.department for s in r.studies(Target("instance-uid", "9.9"))} == {"Radiology", "Cardiology"}


def test_the_patient_of_a_study_is_judged_on_every_study_of_the_patient() -> None:
    fake = FakeOrthanc()
    fake.add("own", "1.2.5", "SHARED", "Radiology")
    fake.add("theirs", "1.2.6", "SHARED", "Cardiology")
    r = _resolver(fake)
    assert judge(SCOPED, "GET", "/studies/own", None, r.studies).allow
    for path in ("/studies/own/patient", "/studies/own/patient/", "/instances/i-own/patient"):
        assert scopes.targets_of(path).targets[0].level.startswith(scopes.PATIENT_OF), path
        assert not judge(SCOPED, "GET", path, None, r.studies).allow, path
    assert scopes.targets_of("/patients/p-SHARED").targets == (Target("patients", "p-SHARED"),)


def test_cache_forgets_on_delete_and_patients_on_a_new_study() -> None:
    fake = FakeOrthanc()
    fake.add("s", "1.2.7", "P7", "Radiology")
    r = _resolver(fake)
    assert judge(SCOPED, "GET", "/studies/s", None, r.studies).allow
    assert judge(SCOPED, "GET", "/patients/p-P7", None, r.studies).allow
    # another department's study joins the patient: the patient answer goes, the study's stays
    fake.add("t", "1.2.8", "P7", "Cardiology")
    r.changed("new-study")
    assert r.cached(Target("studies", "s")) is not None
    assert not judge(SCOPED, "GET", "/patients/p-P7", None, r.studies).allow
    # the study is deleted and stored again (same ids) under another department
    fake.studies["s"] = ("1.2.7", "P7", "Cardiology")
    r.changed("deleted")
    assert not judge(SCOPED, "GET", "/studies/s", None, r.studies).allow
    r.changed("stable-study")  # other changes keep the cache
    assert r.cached(Target("studies", "s")) is not None


def test_a_lookup_that_raced_a_change_is_not_cached() -> None:
    fake = FakeOrthanc()
    fake.add("s", "1.2.9", "P9", "Radiology")
    r = _resolver(fake)
    original = fake.get

    def racing_get(uri: str) -> Any:
        r.changed("deleted")  # Orthanc deletes while the lookup is in flight
        return original(uri)

    r.rest_get = racing_get
    assert r.studies(Target("studies", "s"))
    assert r.cached(Target("studies", "s")) is None


@pytest.mark.parametrize("value", [
    ["Radiology"], "Radiology", {"departments": "Radiology"}, {"departments": ["Radiology", 5]},
    {"departments": {"Radiology": True}}, {"departments": 0}, {"departments": ""}, {"departments": {}},
    {"departments": False}, {"institutions": "Hospital"}, {"department": ["Cardiology"]},
    {"departments": [], "institutions": [], "modalities": ["CT"]}, 0, "",
])
def test_malformed_scopes_match_nothing_on_every_path(value: Any) -> None:
    """A grant whose ``scope`` is not ``{departments|institutions|studies|patients: [str]}`` (absent or
    empty lists mean every study) matches nothing: never read as "unscoped"."""
    fake = FakeOrthanc()
    fake.add("s", "1.2.10", "P10", "Radiology")
    r = _resolver(fake)
    claims = {"grants": [{"kind": "role", "role": "r", "permissions": ["view", "upload", "admin", "download"],
                          "scope": value}]}
    assert grants.from_claims(claims) == ()
    for method, path in (("GET", "/studies/s"), ("GET", "/studies/s/archive"), ("GET", "/patients/p-P10"),
                         ("GET", "/jobs/j/archive"), ("GET", "/studies"), ("POST", "/instances")):
        assert not judge(claims, method, path, None, r.studies).allow, path
    assert not judge(claims, "GET", "/dicom-web/studies", {"StudyInstanceUID": "1.2.10"}, r.studies).allow
    instance = scopes.StudyInfo("", "1.2.11", "P11", "Radiology", "Hospital")
    assert not scopes.upload_allowed(grants.from_claims(claims), instance, [])[0]


@pytest.mark.parametrize("value", [None, {}, {"departments": [], "institutions": []}, {"departments": None}])
def test_absent_or_empty_scopes_are_unscoped(value: Any) -> None:
    claims = {"grants": [{"kind": "role", "role": "r", "permissions": ["view"], "scope": value}]}
    parsed = grants.from_claims(claims)
    assert len(parsed) == 1 and parsed[0].unrestricted and not grants.any_restricted(parsed)


def test_an_access_audited_after_the_study_was_deleted_keeps_its_study(tmp_path: Any) -> None:
    """The shipper resolves an allowed request's study when it flushes (off the request path); a deletion in
    between empties the scope cache, but the access must still name the study and patient it touched."""
    import json

    from bridge.pacs.audit_shipper import AuditShipper

    fake = FakeOrthanc()
    fake.add("s", "1.2.20", "P20", "Radiology")
    r = _resolver(fake)
    sent: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.extend(json.loads(body)["events"])
        return 202

    shipper = AuditShipper(source="orthanc", issuer="https://b", spool_dir=str(tmp_path / "spool"),
                           audit_url="https://b/audit/events", post=post, resolver=r)
    assert r.studies(Target("studies", "s"))  # resolved (e.g. by an earlier request), now cached
    shipper.record("allow", {"sub": "u1", "jti": "j1"}, "GET", "/studies/s", "10.0.0.1", "view", "ok",
                   Target("studies", "s"))
    del fake.studies["s"]  # viewed, then deleted before the flush
    r.changed("deleted")
    assert r.studies(Target("studies", "s")) == []  # decisions never see it again ...
    assert shipper.flush() == 1
    ids = {(o["kind"], o["id"]) for o in sent[0]["objects"]}
    assert ("study", "1.2.20") in ids and ("patient", "P20") in ids  # ... the audit trail still does
