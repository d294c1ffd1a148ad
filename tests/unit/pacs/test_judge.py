"""The one decision (gate.judge) behind the Orthanc plugin, and the upload check of its
received-instance callback, with Orthanc's REST API replaced by a dictionary of studies."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pacs_bridge_double import ISSUER, JWKS_URL, REVOKED_URL, FakeBridge

from bridge.pacs import gate as gate_mod
from bridge.pacs import plugin_config
from bridge.pacs.gate import Gate, RequestContext, judge
from bridge.pacs.scopes import StudyInfo, Target

RAD = StudyInfo("s-rad", "1.2.1", "P-1", "Radiology", "Hospital")
CARD = StudyInfo("s-card", "1.2.2", "P-2", "Cardiology", "Hospital")
BY_UID = {RAD.study_uid: RAD, CARD.study_uid: CARD}
BY_ID = {RAD.orthanc_id: RAD, CARD.orthanc_id: CARD}


def token(*grants: tuple[list[str], dict[str, list[str]]]) -> dict[str, Any]:
    """Claims with one grant per ``(permissions, scope)``."""
    return {"grants": [{"kind": "role", "role": f"r{n}", "permissions": perms, "scope": scope}
                       for n, (perms, scope) in enumerate(grants)]}


SCOPED = token((["view", "download", "upload"], {"departments": ["Radiology"]}))
UNSCOPED = token((["view", "download", "upload"], {}))


def studies_of(target: Target) -> list[StudyInfo]:
    if target.level == "study-uid":
        return [BY_UID[target.key]] if target.key in BY_UID else []
    if target.level == "studies":
        return [BY_ID[target.key]] if target.key in BY_ID else []
    return []


@pytest.mark.parametrize("path, query, scoped_ok", [
    ("/studies/s-rad", None, True),
    ("/studies/s-card", None, False),
    ("/studies/s-rad/archive", None, True),
    ("/studies", None, True),  # served filtered by the plugin's listing callback (bridge.pacs.listing)
    ("/studies/", None, True),  # the same callback (Orthanc drops the empty component)
    ("/dicom-web/studies", {}, True),  # QIDO, filtered by the plugin's /dicom-web/ callback
    ("/dicom-web/studies", {"StudyInstanceUID": "1.2.1"}, True),
    ("/dicom-web/studies", {"StudyInstanceUID": "1.2.1", "0020000D": "1.2.2"}, False),
    ("/dicom-web/studies", {"0020000D": "1.2.2", "StudyInstanceUID": "1.2.1"}, False),
    ("/dicom-web/studies", {"StudyInstanceUID": "1.2.1\\1.2.2"}, False),
    ("/dicom-web/studies", {"StudyInstanceUID": "1.2.1,1.2.1"}, True),
    ("/dicom-web/studies", {"StudyInstanceUID": "1.2.1\\1.2.9"}, False),  # one unknown: cannot be checked
    ("/dicom-web/studies", {"studyinstanceuid": "1.2.1"}, False),
    ("/dicom-web/series", {"0020000d": "1.2.1"}, True),
    ("/dicom-web/instances", {"0020000D": "1.2.2"}, False),
    ("/dicom-web/studies/1.2.1/series", {"0020000D": "1.2.2"}, False),
    ("/wado", {"studyUID": "1.2.1", "objectUID": "1.2.2.1.1"}, False),
])
def test_scoped_decisions(path: str, query: dict[str, str] | None, scoped_ok: bool) -> None:
    verdict = judge(SCOPED, "GET", path, query, studies_of, filtered_listings=True)
    assert verdict.allow is scoped_ok, verdict.reason
    assert judge(UNSCOPED, "GET", path, query, studies_of).allow  # the scope is the only difference


def test_route_permission_comes_first() -> None:
    viewer = token((["view"], {}))
    verdict = judge(viewer, "GET", "/studies/s-rad/archive", None, studies_of)
    assert not verdict.allow and verdict.permission == "download"
    assert judge(viewer, "GET", "/studies/s-rad", None, studies_of).permission == "view"
    assert not judge(viewer, "GET", "/no-such-route", None, studies_of).allow


# ------------------------------------------------------------------ the gate


@pytest.fixture
def gate(bridge: FakeBridge, tmp_path: Path) -> Iterator[Gate]:
    config = plugin_config.build({"issuer": ISSUER, "audience": "pacs", "jwks_url": JWKS_URL,
                                  "revocation_url": REVOKED_URL, "audit_spool_dir": str(tmp_path),
                                  "revocation_refresh_seconds": 0}, "test", environ={})

    def rest_get(uri: str) -> str:
        _kind, oid, *rest = uri.strip("/").split("/")
        s = BY_ID[oid]
        if rest == ["instances"]:
            return json.dumps([{"ID": "i-" + oid}])
        return json.dumps({"MainDicomTags": {"StudyInstanceUID": s.study_uid, "InstitutionName": s.institution},
                           "PatientMainDicomTags": {"PatientID": s.patient_id}})

    def rest_get_all(uri: str) -> str:
        if uri.startswith("/instances/i-"):
            return json.dumps({"InstitutionalDepartmentName": BY_ID[uri.split("/")[2][2:]].department})
        return rest_get(uri)

    def rest_post(uri: str, body: str) -> str:
        s = BY_UID.get(body)
        return json.dumps([{"ID": s.orthanc_id, "Type": "Study"}] if s else [])

    g = Gate(config, rest_get_all, rest_post, fetch=bridge.fetch)
    yield g
    gate_mod.clear_request_context()


def _records(g: Gate) -> list[tuple[Any, ...]]:
    return list(g.audit._queue)


def test_gate_uses_the_one_decision(gate: Gate, bridge: FakeBridge) -> None:
    token = bridge.token(permissions=["view"], scopes={"departments": ["Radiology"], "institutions": []})
    auth = {"authorization": f"Bearer {token}"}
    assert gate.decide("/studies/s-rad", 1, auth, {}) is True
    assert gate.decide("/studies/s-card", 1, auth, {}) is False
    assert gate.decide("/dicom-web/studies", 1, auth, {"StudyInstanceUID": "1.2.1", "0020000D": "1.2.2"}) is False
    assert gate.decide("/dicom-web/studies", 1, auth, {"StudyInstanceUID": "1.2.1"}) is True
    deny = [r for r in _records(gate) if r[1] == "deny"]
    assert any("ambiguous" in r[7] for r in deny)


def test_gate_without_revocation_denies_everything(gate: Gate, bridge: FakeBridge) -> None:
    object.__setattr__(gate.config, "revocation_url", None)  # e.g. a Gate built around a hand-made config
    token = bridge.token(permissions=["view"])
    assert gate.decide("/studies/s-rad", 1, {"authorization": f"Bearer {token}"}, {}) is False
    assert any(r[7] == gate_mod.NO_REVOCATION_REASON for r in _records(gate))


def _tags(study_uid: str, department: str, institution: str = "Hospital") -> dict[str, str]:
    return {"StudyInstanceUID": study_uid, "InstitutionalDepartmentName": department,
            "InstitutionName": institution, "PatientID": "P-x"}


def _request(gate: Gate, bridge: FakeBridge, departments: list[str] | None) -> None:
    """Run the filter for an upload on this thread, as Orthanc does before storing."""
    scopes = {"departments": departments, "institutions": []} if departments else None
    token = bridge.token(permissions=["upload"], scopes=scopes)
    assert gate.decide("/instances", 2, {"authorization": f"Bearer {token}"}, None) is True


@pytest.mark.parametrize("tags, ok", [
    (_tags("1.2.1", "Radiology"), True),            # into an in-scope study
    (_tags("1.9.9", "Radiology"), True),            # a new in-scope study
    (_tags("1.2.2", "Radiology"), False),           # claims Radiology, joins the Cardiology study
    (_tags("1.9.9", "Cardiology"), False),          # a new study outside the scope
    (_tags("1.9.9", ""), False),                    # no department: outside any department scope
    (_tags("1.2.1", "Cardiology"), False),          # an out-of-scope instance into an in-scope study
])
def test_scoped_upload(gate: Gate, bridge: FakeBridge, tags: dict[str, str], ok: bool) -> None:
    _request(gate, bridge, ["Radiology"])
    assert gate.admit_instance("rest", lambda: tags) is ok
    assert gate.admit_instance("plugin", lambda: tags) is ok  # STOW-RS stores through the plugin
    if not ok:
        denied = [r for r in _records(gate) if r[1] == "deny" and r[6] == "upload"]
        assert denied and "outside" in denied[-1][7] and denied[-1][4] == "/instances"


def test_unscoped_upload_and_cstore_pass_without_parsing(gate: Gate, bridge: FakeBridge) -> None:
    def boom() -> dict[str, str]:
        raise AssertionError("no need to parse")

    _request(gate, bridge, None)
    assert gate.admit_instance("rest", boom) is True
    gate_mod.clear_request_context()
    assert gate.admit_instance("dicom", boom) is True


def test_context_is_per_request(gate: Gate, bridge: FakeBridge) -> None:
    _request(gate, bridge, None)  # an unscoped upload ...
    token = bridge.token(permissions=["upload"], scopes={"departments": ["Radiology"], "institutions": []})
    gate.decide("/instances", 2, {"authorization": f"Bearer {token}"}, None)  # ... then a scoped one
    assert gate.admit_instance("rest", lambda: _tags("1.2.2", "Cardiology")) is False
    gate.decide("/instances", 2, {"authorization": "Bearer garbage"}, None)  # a denied request clears it
    assert gate_mod.current_request() is None


def test_instances_without_a_request(gate: Gate) -> None:
    """Job threads (modify/anonymize, DICOMweb retrieve) have no request: no joining another
    department's study; Lua/WebDAV/unknown origins are refused."""
    gate_mod.clear_request_context()
    assert gate.admit_instance("rest", lambda: _tags("1.9.9", "Cardiology")) is True
    assert gate.admit_instance("rest", lambda: _tags("1.2.1", "Radiology")) is True
    assert gate.admit_instance("rest", lambda: _tags("1.2.2", "Radiology")) is False
    assert gate.admit_instance("plugin", lambda: _tags("1.2.1", "Radiology", "Elsewhere")) is False
    for origin in ("lua", "webdav", "unknown"):
        assert gate.admit_instance(origin, lambda: _tags("1.9.9", "Radiology")) is False
    assert RequestContext(None, "STORE", "(job)", "").claims is None


def test_failed_study_lookup_never_reads_as_a_new_study(gate: Gate, bridge: FakeBridge) -> None:
    def broken(uri: str, body: str) -> str:
        raise RuntimeError("Orthanc busy")

    gate.resolver.rest_post = broken
    _request(gate, bridge, ["Radiology"])
    with pytest.raises(RuntimeError):  # the plugin's callback turns this into a discard
        gate.admit_instance("rest", lambda: _tags("1.2.2", "Radiology"))
    # ... while the request path stays fail-closed with []: a scoped QIDO is denied
    assert not judge(SCOPED, "GET", "/dicom-web/studies", {"StudyInstanceUID": "1.2.1"},
                     gate.resolver.studies).allow


def test_create_dicom_needs_scope_over_the_patient_it_copies(gate: Gate, bridge: FakeBridge) -> None:
    """create-dicom's ``Parent`` copies a stored patient's tags into the new instance: a scoped token needs
    every study of that patient in scope there (POST /instances keeps joining a shared patient)."""
    lookup, get = gate.resolver.rest_post, gate.resolver.rest_get
    patients = {"P-2": ["s-card"], "P-1": ["s-rad"]}

    def rest_post(uri: str, body: str) -> str:
        if body in patients:
            return json.dumps([{"ID": "pat-" + body, "Type": "Patient"}])
        return str(lookup(uri, body))

    def rest_get(uri: str) -> str:
        if uri.startswith("/patients/pat-"):
            return json.dumps({"Studies": patients[uri.removeprefix("/patients/pat-")]})
        return str(get(uri))

    gate.resolver.rest_post, gate.resolver.rest_get = rest_post, rest_get
    token = bridge.token(permissions=["upload"], scopes={"departments": ["Radiology"], "institutions": []})
    new_study = {"StudyInstanceUID": "1.9.9", "InstitutionalDepartmentName": "Radiology",
                 "InstitutionName": "Hospital"}
    for uri in ("/tools/create-dicom", "/tools/create-dicom/"):
        assert gate.decide(uri, 2, {"authorization": f"Bearer {token}"}, None) is True
        assert gate.admit_instance("rest", lambda: {**new_study, "PatientID": "P-2"}) is False
        assert gate.admit_instance("rest", lambda: {**new_study, "PatientID": "P-1"}) is True
        assert gate.admit_instance("rest", lambda: {**new_study, "PatientID": "P-new"}) is True
    denied = [r for r in _records(gate) if r[1] == "deny" and r[6] == "upload"]
    assert denied and "copies a patient" in denied[-1][7]
    # a plain upload may still join a patient shared with another department
    assert gate.decide("/instances", 2, {"authorization": f"Bearer {token}"}, None) is True
    assert gate.admit_instance("rest", lambda: {**new_study, "PatientID": "P-2"}) is True


def test_scoped_admin_only_below_a_resource_in_scope() -> None:
    admin = token((["admin", "download", "view"], {"departments": ["Radiology"]}))
    for method, path in (("GET", "/jobs/j1/archive"), ("GET", "/jobs"), ("GET", "/jobs/j1"),
                         ("POST", "/tools/execute-script"), ("GET", "/plugins"), ("POST", "/tools/reset")):
        assert not judge(admin, method, path, None, studies_of).allow, path
        assert judge(token((["admin", "download", "view"], {})), method, path, None, studies_of).allow, path
    assert judge(admin, "POST", "/instances/x/export", None, lambda t: [RAD]).allow
    assert not judge(admin, "POST", "/instances/x/export", None, lambda t: [CARD]).allow


def test_create_dicom_without_a_patient_id_is_refused_to_a_scoped_token(gate: Gate, bridge: FakeBridge) -> None:
    """An empty PatientID cannot be looked up, yet Parent may name the patient stored under it."""
    token = bridge.token(permissions=["upload"], scopes={"departments": ["Radiology"], "institutions": []})
    assert gate.decide("/tools/create-dicom", 2, {"authorization": f"Bearer {token}"}, None) is True
    tags = {"StudyInstanceUID": "1.9.9", "InstitutionalDepartmentName": "Radiology", "InstitutionName": "Hospital"}
    assert gate.admit_instance("rest", lambda: {**tags, "PatientID": ""}) is False
    assert gate.admit_instance("rest", lambda: tags) is False
    assert gate.decide("/instances", 2, {"authorization": f"Bearer {token}"}, None) is True
    assert gate.admit_instance("rest", lambda: {**tags, "PatientID": ""}) is True


def test_a_refusal_for_a_missing_permission_names_its_target(gate: Gate, bridge: FakeBridge) -> None:
    """A radiologist's DELETE is refused on the route permission before any study is named; the
    audit record must still carry the target, so the shipper can name the study and patient and
    the refusal shows in that patient's access report (docs/governance.md)."""
    token = bridge.token(permissions=["view"])
    assert gate.decide("/studies/s-rad", 4, {"authorization": f"Bearer {token}"}, {}) is False
    (deny,) = [r for r in _records(gate) if r[1] == "deny"]
    assert deny[6] == "delete" and deny[8] == Target("studies", "s-rad")


# ------------------------------------------------------------------ per-role grants, never merged


def test_an_unrestricted_grant_is_not_narrowed_by_a_scoped_one() -> None:
    both = token((["view"], {}), (["view", "download"], {"departments": ["Cardiology"]}))
    assert judge(both, "GET", "/studies", None, studies_of).allow  # a list: the unrestricted grant holds view
    assert judge(both, "GET", "/studies/s-rad", None, studies_of).allow
    assert judge(both, "GET", "/studies/s-card/archive", None, studies_of).allow
    assert not judge(both, "GET", "/studies/s-rad/archive", None, studies_of).allow
    assert not judge(both, "GET", "/tools/create-archive", None, studies_of).allow  # download: no list


def test_two_scoped_grants_never_lend_permissions_or_combine_studies() -> None:
    two = token((["view", "delete"], {"departments": ["Cardiology"]}), (["view"], {"departments": ["Radiology"]}))
    assert judge(two, "DELETE", "/studies/s-card", None, studies_of).allow
    verdict = judge(two, "DELETE", "/studies/s-rad", None, studies_of)
    assert not verdict.allow and "department Radiology" in verdict.reason and "r0" in verdict.reason
    # one QIDO naming a study of each department: each grant covers one, none covers both
    both = judge(two, "GET", "/dicom-web/studies", {"StudyInstanceUID": "1.2.1\\1.2.2"}, studies_of)
    assert not both.allow and "no single grant" in both.reason
    assert not judge(two, "GET", "/studies", None, studies_of).allow  # no unrestricted grant: no list


def test_a_route_needing_two_permissions_needs_them_in_one_grant() -> None:
    split = token((["modify", "view"], {}), (["download", "view"], {}))
    verdict = judge(split, "POST", "/instances/i1/modify", None, studies_of)
    assert not verdict.allow and "no single grant holds" in verdict.reason
    assert judge(token((["modify", "download", "view"], {})), "POST", "/instances/i1/modify", None,
                 studies_of).allow


def test_the_allowing_grant_is_named_and_a_share_is_the_same_mechanism() -> None:
    share = {"grants": [{"kind": "share", "role": None, "permissions": ["view"], "scope": {"studies": ["1.2.2"]}}]}
    verdict = judge(share, "GET", "/studies/s-card", None, studies_of)
    assert verdict.allow and verdict.reason.endswith("by share (studies 1.2.2)") and verdict.grant is not None
    assert not judge(share, "GET", "/studies/s-rad", None, studies_of).allow
    rad = judge(UNSCOPED, "GET", "/studies/s-rad", None, studies_of)
    assert rad.reason.endswith("by role r0 (everywhere)")


@pytest.mark.parametrize("claims", [
    {"grants": [{"kind": "role", "permissions": ["view"], "scope": {"wards": ["A"]}}]},
    {"grants": [{"kind": "role", "permissions": ["view"], "scope": {"departments": "Radiology"}}]},
    {"grants": [{"kind": "share", "permissions": ["view"], "scope": {}, "exp": 1}]},  # expired
    {"grants": {"kind": "role", "permissions": ["view"], "scope": {}}},
    {"permissions": ["view"], "scopes": {}},  # format 1's claims: no grant
])
def test_malformed_or_expired_grants_allow_nothing(claims: dict[str, Any]) -> None:
    for path in ("/studies/s-rad", "/studies"):
        assert not judge(claims, "GET", path, None, studies_of).allow, path


def test_upload_needs_one_grant_covering_instance_and_study(gate: Gate, bridge: FakeBridge) -> None:
    """Upload in Radiology and view in Cardiology: the instance may not join the Cardiology study."""
    grants = [{"kind": "role", "role": "tech", "permissions": ["upload"], "scope": {"departments": ["Radiology"]}},
              {"kind": "role", "role": "card", "permissions": ["view"], "scope": {"departments": ["Cardiology"]}}]
    tok = bridge.token(grants=grants, permissions=["upload", "view"])
    assert gate.decide("/instances", 2, {"authorization": f"Bearer {tok}"}, None) is True
    assert gate.admit_instance("rest", lambda: _tags("1.9.9", "Radiology")) is True
    assert gate.admit_instance("rest", lambda: _tags("1.9.9", "Cardiology")) is False
    assert gate.admit_instance("rest", lambda: _tags("1.2.2", "Radiology")) is False
    grants.append({"kind": "role", "role": "all", "permissions": ["upload"], "scope": {}})
    tok = bridge.token(grants=grants, permissions=["upload", "view"])
    assert gate.decide("/instances", 2, {"authorization": f"Bearer {tok}"}, None) is True
    assert gate.admit_instance("rest", lambda: _tags("1.2.2", "Radiology")) is True  # the unrestricted one


def test_allowed_audit_events_name_the_grant(gate: Gate, bridge: FakeBridge) -> None:
    grants = [{"kind": "role", "role": "card", "permissions": ["view", "download"],
               "scope": {"departments": ["Radiology"]}}]
    tok = bridge.token(grants=grants)
    assert gate.decide("/studies/s-rad/archive", 1, {"authorization": f"Bearer {tok}"}, {}) is True
    assert gate.decide("/studies/s-card/archive", 1, {"authorization": f"Bearer {tok}"}, {}) is False
    allowed = [r for r in _records(gate) if r[1] == "allow"]
    denied = [r for r in _records(gate) if r[1] == "deny"]
    assert allowed and "by role card (departments Radiology)" in allowed[-1][7]
    assert denied and "role card (departments Radiology) does not cover department Cardiology" in denied[-1][7]


def test_a_grant_expiring_inside_a_cached_token_stops_allowing(gate: Gate, bridge: FakeBridge) -> None:
    now = int(time.time())
    grants = [{"kind": "break-glass", "role": None, "permissions": ["view"], "scope": {"studies": ["1.2.1"]},
               "exp": now + 2}]
    tok = bridge.token(grants=grants)
    auth = {"authorization": f"Bearer {tok}"}
    assert gate.decide("/studies/s-rad", 1, auth, {}) is True
    gate.verifier.clock = lambda: now + 3  # the token lives on in the verified cache; its grant does not
    assert gate.decide("/studies/s-rad", 1, auth, {}) is False
