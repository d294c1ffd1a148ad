"""Scoped search on the real Orthanc 1.10.1 + DICOMweb 1.7 with the bridge plugin: a token whose only
``view`` grant is limited to one department lists and searches only that department's studies in
``/studies``, ``/patients``, ``/series``, ``/instances`` (with expand, limit, since), ``/tools/find`` and
QIDO-RS at ``/dicom-web/`` (served by the plugin in front of the DICOMweb plugin's internal root); an
unrestricted token sees the core's answer unchanged; the internal root is refused from outside.

Data: 3 studies in ``Search-Cardio`` (the scope) and 7 elsewhere (more outside than inside); patient
S-MIX has one study in and one out of scope.  Tokens are minted as the bridge mints them, with a
``grants`` claim added (the format-2 claim), and ``scopes`` set to the union so that a plugin deciding
on the older claim judges them the same way.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.core.permissions import Permission as P
from bridge.pacs.dicomweb import INTERNAL_ROOT
from pacs_devstack.pacs_double import dicom_instance

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.10.1137.77"
SCOPE = "Search-Cardio"
#: (patient id, department) per study; two instances per study
PLAN = (
    ("S-MIX", SCOPE), ("S-MIX", "Search-Other"),
    ("S-C1", SCOPE), ("S-C2", SCOPE),
    ("S-O1", "Search-Other"), ("S-O2", "Search-Other"), ("S-O3", "Search-Neuro"), ("S-O4", "Search-Neuro"),
    ("S-O5", "Search-Neuro"), ("S-O6", "Search-Other"),
)


@pytest.fixture(scope="module")
def data(pacs: Any) -> dict[str, Any]:
    token = pacs.bridge.token([P.UPLOAD, P.VIEW], roles=["technologist"])
    out: dict[str, Any] = {"studies": {}, "series": {}, "instances": {}, "patients": {}}
    for n, (pid, dept) in enumerate(PLAN, start=1):
        uid = f"{ROOT}.{n}"
        for k in (1, 2):
            blob = dicom_instance(patient_id=pid, patient_name=f"Search^{pid}", study_uid=uid,
                                  series_uid=f"{uid}.1", sop_uid=f"{uid}.1.{k}", modality="CT",
                                  department=dept, institution="Hospital Search", accession=f"SRCH{n:03d}")
            resp = pacs.request("POST", "/instances", token, data=blob, headers={"Content-Type": "application/dicom"})
            assert resp.status_code == 200, resp.status_code
            a = resp.json()
            inside = dept == SCOPE
            out["studies"][a["ParentStudy"]] = (uid, inside)
            out["series"][a["ParentSeries"]] = (uid, inside)
            out["instances"][a["ID"]] = (uid, inside)
            seen = out["patients"].setdefault(a["ParentPatient"], set())
            if inside:
                seen.add(a["ParentStudy"])
    return out


def _token(pacs: Any, grants: list[dict[str, Any]], departments: tuple[str, ...] = ()) -> str:
    perms = sorted({p for g in grants for p in g["permissions"]})
    claims = pacs.bridge.claims(perms, roles=["search-test"], departments=departments)
    claims["grants"] = grants
    return pacs.bridge.ring.sign(claims)


def _grant(permissions: list[str], departments: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "role", "role": "r", "permissions": permissions,
            "scope": {"departments": departments} if departments else {}}


@pytest.fixture(scope="module")
def scoped(pacs: Any, data: dict[str, Any]) -> str:
    return _token(pacs, [_grant(["view"], [SCOPE])], (SCOPE,))


@pytest.fixture(scope="module")
def unscoped(pacs: Any, data: dict[str, Any]) -> str:
    return _token(pacs, [_grant(["view", "download", "upload"])])


def _mine(ids: list[str], data: dict[str, Any], level: str) -> set[str]:
    """The ids of this module's resources in an answer (other tests' studies may be stored too)."""
    return {i for i in ids if i in data[level]}


def _expected(data: dict[str, Any], level: str) -> set[str]:
    if level == "patients":
        return {p for p, inside in data["patients"].items() if inside}
    return {i for i, (_, inside) in data[level].items() if inside}


@pytest.mark.parametrize("level", ["studies", "series", "instances", "patients"])
def test_scoped_lists_only_in_scope(pacs: Any, data: dict[str, Any], scoped: str, unscoped: str, level: str) -> None:
    got = pacs.get(f"/{level}", scoped)
    assert got.status_code == 200
    assert set(got.json()) == _expected(data, level)  # nothing of anybody else's either
    everything = pacs.get(f"/{level}", unscoped).json()
    assert _mine(everything, data, level) == set(data[level])  # unrestricted: all of them
    expanded = pacs.get(f"/{level}?expand", scoped).json()
    assert {e["ID"] for e in expanded} == _expected(data, level)
    for e in expanded:
        if level == "patients":  # only the visible studies of a patient with studies in and out of scope
            assert set(e["Studies"]) == data["patients"][e["ID"]]
        if level == "studies":
            assert e["ParentPatient"] in data["patients"]
    assert pacs.get(f"/{level}/", scoped).json() == got.json()  # the trailing-slash spelling is filtered too


@pytest.mark.parametrize("level", ["studies", "instances", "patients"])
def test_paging_after_filtering(pacs: Any, data: dict[str, Any], scoped: str, level: str) -> None:
    """limit/since count in the token's own list: pages of 1 and 2 cover it exactly, never a short page
    while more in-scope results exist; since beyond the end is empty; limit=0 is empty."""
    full = pacs.get(f"/{level}", scoped).json()
    for size in (1, 2):
        pages = []
        since = 0
        while True:
            resp = pacs.get(f"/{level}?limit={size}&since={since}", scoped)
            assert resp.status_code == 200
            chunk = resp.json()
            pages.extend(chunk)
            if len(chunk) < size:
                break
            since += size
        assert pages == full
    assert pacs.get(f"/{level}?limit=5&since=1000", scoped).json() == []
    assert pacs.get(f"/{level}?limit=0&since=0", scoped).json() == []
    assert pacs.get(f"/{level}?expand&limit=1&since=1", scoped).json()[0]["ID"] == full[1]


@pytest.mark.parametrize("query", ["limit=-1&since=0", "limit=1", "since=0", "limit=abc&since=0",
                                   "limit=99999999999&since=0", "limit=1&since=-1", "limit=1.0&since=0"])
def test_bad_paging_parameters_are_refused(pacs: Any, scoped: str, query: str) -> None:
    assert pacs.get(f"/studies?{query}", scoped).status_code == 400


def test_parameter_spellings_and_repeats(pacs: Any, data: dict[str, Any], scoped: str) -> None:
    """``Expand``/``EXPAND`` is not ``expand`` (the core ignores it too): ids only, still filtered; a repeated
    ``limit`` counts once (Orthanc keeps the last value)."""
    assert set(pacs.get("/studies?Expand", scoped).json()) == _expected(data, "studies")
    assert len(pacs.get("/studies?limit=5&limit=1&since=0", scoped).json()) == 1
    with_tags = pacs.get("/studies?expand&requestedTags=0008,1040&full", scoped).json()  # extra args: still filtered
    assert {e["ID"] for e in with_tags} == _expected(data, "studies")


def _find(pacs: Any, token: str, body: Any) -> Any:
    return pacs.request("POST", "/tools/find", token, data=json.dumps(body) if not isinstance(body, str) else body)


@pytest.mark.parametrize("level, key", [("Study", "studies"), ("Series", "series"), ("Instance", "instances"),
                                        ("Patient", "patients"), ("study", "studies"), ("INSTANCE", "instances")])
def test_tools_find_filters_every_level(pacs: Any, data: dict[str, Any], scoped: str, unscoped: str, level: str,
                                        key: str) -> None:
    resp = _find(pacs, scoped, {"Level": level, "Query": {}})
    assert resp.status_code == 200 and set(resp.json()) == _expected(data, key)
    assert _mine(_find(pacs, unscoped, {"Level": level, "Query": {}}).json(), data, key) == set(data[key])
    wildcard = {"Level": level, "Query": {"PatientName": "*"}, "Expand": True}
    assert {e["ID"] for e in _find(pacs, scoped, wildcard).json()} == _expected(data, key)


def test_tools_find_naming_an_out_of_scope_study(pacs: Any, data: dict[str, Any], scoped: str) -> None:
    outside = next(uid for uid, inside in data["studies"].values() if not inside)
    for query in ({"StudyInstanceUID": outside}, {"AccessionNumber": "SRCH002"}, {"AccessionNumber": "srch00*"},
                  {"StudyInstanceUID": outside + "*"}):  # the last one: the core refuses a wildcard UID (400)
        for case in (True, False):
            body = {"Level": "Study", "Query": query, "CaseSensitive": case, "Expand": True}
            for level, key in (("Study", "studies"), ("Instance", "instances"), ("Series", "series"),
                               ("Patient", "patients")):
                resp = _find(pacs, scoped, {**body, "Level": level})
                if resp.status_code == 400:
                    continue
                got = _mine([e["ID"] for e in resp.json()], data, key)
                assert got <= _expected(data, key), (query, level)
                if "StudyInstanceUID" in query or query["AccessionNumber"] == "SRCH002":
                    assert got == set(), (query, level)


def test_tools_find_paging_and_odd_parameters(pacs: Any, data: dict[str, Any], scoped: str) -> None:
    base = {"Level": "Instance", "Query": {"PatientName": "Search^*"}}
    full = _find(pacs, scoped, base).json()
    assert set(full) == _expected(data, "instances")
    got = []
    for since in range(0, len(full) + 2):
        got.extend(_find(pacs, scoped, {**base, "Limit": 1, "Since": since}).json())
    assert got == full
    assert _find(pacs, scoped, {**base, "Limit": 0}).json() == full  # 0: no limit, as in the core
    assert _find(pacs, scoped, {**base, "Since": 10_000}).json() == []
    assert _find(pacs, scoped, {**base, "limit": 1}).json() == full  # the core's keys are case-sensitive
    for bad in ({"Limit": -1}, {"Limit": "1"}, {"Limit": 1.5}, {"Limit": True}, {"Since": -3},
                {"Limit": 2**40}, {"Expand": "yes"}, {"Level": "Everything"}, {"Level": 3}):
        assert _find(pacs, scoped, {**base, **bad}).status_code == 400, bad
    assert _find(pacs, scoped, "[1]").status_code == 400
    assert _find(pacs, scoped, "not json").status_code == 400


def test_unrestricted_token_gets_the_core_answer(pacs: Any, data: dict[str, Any], unscoped: str) -> None:
    """Passed through: the core's own paging and its own errors (limit without since is its 400)."""
    everything = pacs.get("/studies", unscoped).json()
    assert pacs.get(f"/studies?limit=2&since={len(everything) - 1}", unscoped).json() == everything[-1:]
    assert pacs.get("/studies?limit=1", unscoped).status_code == 400
    body = {"Level": "Study", "Query": {"PatientID": "S-*"}, "Limit": 3}
    assert len(_find(pacs, unscoped, body).json()) == 3


def test_grants_of_different_permissions(pacs: Any, data: dict[str, Any], unscoped: str) -> None:
    """An unrestricted grant without ``view`` lends the listing nothing; an unrestricted ``view`` grant beside a
    scoped one makes the listing the core's answer."""
    download_everywhere = _token(pacs, [_grant(["download"]), _grant(["view"], [SCOPE])], (SCOPE,))
    assert set(pacs.get("/studies", download_everywhere).json()) == _expected(data, "studies")
    assert set(_find(pacs, download_everywhere, {"Level": "Study", "Query": {}}).json()) == _expected(data, "studies")
    view_everywhere = _token(pacs, [_grant(["view"]), _grant(["view", "delete"], [SCOPE])])
    assert pacs.get("/studies?expand", view_everywhere).json() == pacs.get("/studies?expand", unscoped).json()


def test_other_routes_across_studies_stay_refused(pacs: Any, data: dict[str, Any], scoped: str) -> None:
    outside_series = next(i for i, (_, inside) in data["series"].items() if not inside)
    outside_study = next(i for i, (_, inside) in data["studies"].items() if not inside)
    mixed_patient = next(p for p, inside in data["patients"].items() if inside and len(inside) == 1
                         and any(s not in inside for s in _studies_of(pacs, p)))
    for method, path in (("POST", "/tools/lookup"), ("POST", "/tools/count-resources"), ("GET", "/changes"),
                         ("GET", f"/series/{outside_series}"), ("GET", f"/studies/{outside_study}/series"),
                         ("GET", f"/series/{outside_series}/study"), ("GET", f"/patients/{mixed_patient}"),
                         ("GET", f"/patients/{mixed_patient}/studies"), ("GET", "/jobs")):
        assert pacs.request(method, path, scoped).status_code == 403, path


def _studies_of(pacs: Any, patient: str) -> list[str]:
    admin = pacs.bridge.token([P.VIEW])
    return pacs.get(f"/patients/{patient}", admin).json()["Studies"]


# ------------------------------------------------------------------ QIDO-RS and the DICOMweb root


def _qido_uids(resp: Any) -> list[str]:
    return [d["0020000D"]["Value"][0] for d in resp.json()]


def test_qido_is_filtered_and_paged(pacs: Any, data: dict[str, Any], scoped: str, unscoped: str) -> None:
    inside = sorted({uid for uid, ok in data["studies"].values() if ok})
    resp = pacs.get("/dicom-web/studies?PatientID=S-*", scoped)
    assert resp.status_code == 200 and sorted(_qido_uids(resp)) == inside
    everything = pacs.get("/dicom-web/studies?PatientID=S-*", unscoped)
    plan = {uid for uid, _ in data["studies"].values()}
    assert plan <= set(_qido_uids(everything))
    got = []
    for offset in range(0, len(inside) + 1):
        got.extend(_qido_uids(pacs.get(f"/dicom-web/studies?PatientID=S-*&limit=1&offset={offset}", scoped)))
    assert sorted(got) == inside and len(got) == len(inside)
    assert pacs.get("/dicom-web/studies?limit=0", scoped).json() == []
    for level in ("series", "instances"):
        items = pacs.get(f"/dicom-web/{level}?PatientID=S-*&includefield=00081030&fuzzymatching=true", scoped)
        assert items.status_code == 200 and sorted(set(_qido_uids(items))) == inside, level
    outside = next(uid for uid, ok in data["studies"].values() if not ok)
    assert pacs.get(f"/dicom-web/series?StudyInstanceUID={outside}", scoped).status_code in (200, 403)
    if pacs.get(f"/dicom-web/series?StudyInstanceUID={outside}", scoped).status_code == 200:
        assert pacs.get(f"/dicom-web/series?StudyInstanceUID={outside}", scoped).json() == []
    assert pacs.get(f"/dicom-web/studies/{outside}/series", scoped).status_code == 403
    assert pacs.get("/dicom-web/studies?limit=-1", scoped).status_code == 400


def test_qido_urls_point_at_the_public_root(pacs: Any, data: dict[str, Any], unscoped: str, scoped: str) -> None:
    for token in (unscoped, scoped):
        body = pacs.get("/dicom-web/studies?PatientID=S-*", token).text
        assert "pacs-bridge-internal" not in body
        assert "/dicom-web/studies/" in body


def test_wado_rs_and_stow_rs_pass_through(pacs: Any, data: dict[str, Any], unscoped: str) -> None:
    uid = next(iter(data["studies"].values()))[0]
    metadata = pacs.get(f"/dicom-web/studies/{uid}/metadata", unscoped)
    assert metadata.status_code == 200 and "pacs-bridge-internal" not in metadata.text
    retrieve = pacs.get(f"/dicom-web/studies/{uid}", unscoped)
    assert retrieve.status_code == 200
    assert retrieve.headers["Content-Type"].startswith("multipart/related")
    assert retrieve.content.count(b"DICM") == 2
    boundary = "search-test-boundary"
    blob = dicom_instance(patient_id="X-STOW", patient_name="Search^Stow", study_uid=f"{ROOT}.99",
                          series_uid=f"{ROOT}.99.1", sop_uid=f"{ROOT}.99.1.1", department="Search-Other")
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + blob
            + f"\r\n--{boundary}--\r\n".encode())
    stow = pacs.request("POST", "/dicom-web/studies", unscoped, data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert stow.status_code == 200, stow.status_code
    assert "pacs-bridge-internal" not in stow.text
    assert pacs.get(f"/dicom-web/studies?StudyInstanceUID={ROOT}.99", unscoped).json()


def test_odd_dicomweb_paths_and_methods(pacs: Any, data: dict[str, Any], unscoped: str, scoped: str) -> None:
    """A decoded path with a space reaches the DICOMweb plugin encoded (its 404, never a 500); HEAD on a
    listing is filtered like GET; methods a listing route does not serve are refused."""
    assert pacs.get("/dicom-web/studies/1.2%203/metadata", unscoped).status_code in (400, 404)
    head = pacs.request("HEAD", "/studies", scoped)
    assert head.status_code in (200, 403, 404, 405) and not head.content  # never a body
    assert pacs.request("PUT", "/studies", scoped).status_code in (403, 405)
    assert pacs.request("DELETE", "/studies", scoped).status_code in (403, 405)
    assert pacs.request("GET", "/tools/find", scoped).status_code in (403, 405)


def test_scoped_stow_outside_its_scope_is_refused(pacs: Any, data: dict[str, Any]) -> None:
    """The inner request carries the outer request's context: an upload through /dicom-web/ is still checked."""
    token = _token(pacs, [_grant(["view", "upload"], [SCOPE])], (SCOPE,))
    boundary = "search-test-boundary"
    blob = dicom_instance(patient_id="X-STOW2", patient_name="Search^Stow", study_uid=f"{ROOT}.98",
                          series_uid=f"{ROOT}.98.1", sop_uid=f"{ROOT}.98.1.1", department="Search-Other")
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + blob
            + f"\r\n--{boundary}--\r\n".encode())
    pacs.request("POST", "/dicom-web/studies", token, data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    admin = pacs.bridge.token([P.VIEW])
    assert _find(pacs, admin, {"Level": "Study", "Query": {"StudyInstanceUID": f"{ROOT}.98"}}).json() == []


@pytest.mark.parametrize("path", [
    INTERNAL_ROOT + "studies",
    INTERNAL_ROOT.upper() + "studies",
    INTERNAL_ROOT.replace("/dicom-web/", "%2Fdicom-web/") + "studies",
    "/" + INTERNAL_ROOT + "studies",
    INTERNAL_ROOT.replace("internal", "intern%61l") + "studies",
    INTERNAL_ROOT.replace("internal", "intern%2561l") + "studies",
    INTERNAL_ROOT + "studies/1.2.3/metadata",
    INTERNAL_ROOT[:-1],
    "/dicom-web/../" + INTERNAL_ROOT.lstrip("/") + "studies",
])
def test_internal_root_is_refused_from_outside(pacs: Any, unscoped: str, path: str) -> None:
    assert pacs.get(path, unscoped).status_code == 403, path
    forged = {"Authorization": "PacsBridgeInternal " + "A" * 43}
    assert pacs.request("GET", path, None, headers=forged).status_code == 403, path
