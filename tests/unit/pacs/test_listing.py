"""Filtered listings and searches (bridge.pacs.listing) and the /dicom-web/ front (bridge.pacs.dicomweb), with
Orthanc's REST API and the DICOMweb plugin replaced by an in-memory archive: what a restricted token sees,
paging after filtering, the parameter attacks, the internal root and its one-time passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.core.grants import from_claims
from bridge.deploy.orthanc_config import DicomTls
from bridge.pacs import dicomweb, listing
from bridge.pacs.dicomweb import INTERNAL_ROOT, Passes, Proxy, looks_internal, rewrite_urls
from bridge.pacs.gate import filtered_listing, judge
from bridge.pacs.listing import Lister, Refused, page
from bridge.pacs.scopes import StudyResolver, Target

#: Orthanc's TLS files (required arguments of orthanc_config; the paths are not read)
TLS = {"https_certificate": Path("/etc/o/https.pem"),
       "dicom_tls": DicomTls(Path("/etc/o/dicom.pem"), Path("/etc/o/dicom-key.pem"), Path("/etc/o/modality-ca.pem"))}


DEPTS = ["Cardio", "Other", "Other", "Cardio", "Neuro", "Other", "Other", "Cardio", "Neuro", "Other"]


class Archive:
    """Studies s0..s9 (department DEPTS[i]), one series se-i and two instances i-i-a/b each; patients:
    p-mix holds s0 (Cardio) and s1 (Other), every other study has its own patient."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.studies = {f"s{i}": d for i, d in enumerate(DEPTS)}
        self.patient = {f"s{i}": ("p-mix" if i < 2 else f"p{i}") for i in range(len(DEPTS))}

    def uid(self, sid: str) -> str:
        return f"1.2.{sid[1:]}"

    def ids(self, level: str) -> list[str]:
        if level == "studies":
            return list(self.studies)
        if level == "series":
            return [f"se-{s}" for s in self.studies]
        if level == "instances":
            return [f"i-{s}-{k}" for s in self.studies for k in "ab"]
        return list(dict.fromkeys(self.patient.values()))

    def get(self, uri: str) -> Any:
        self.calls.append(uri)
        path, _, query = uri.partition("?")
        parts = path.strip("/").split("/")
        if len(parts) == 1:
            return json.dumps(self.ids(parts[0]))
        kind, rid = parts[0], parts[1]
        if kind == "studies" and len(parts) == 2:
            return {"ID": rid, "Type": "Study", "MainDicomTags": {"StudyInstanceUID": self.uid(rid)},
                    "PatientMainDicomTags": {"PatientID": self.patient[rid]}, "ParentPatient": self.patient[rid],
                    "Series": [f"se-{rid}"], "Query": query}
        if kind == "studies" and parts[2] == "instances":
            return [{"ID": f"i-{rid}-a"}]
        if kind == "instances" and len(parts) == 2:
            return {"ID": rid, "ParentSeries": "se-" + rid.split("-")[1]}
        if kind == "instances" and parts[2] == "simplified-tags":
            return {"InstitutionalDepartmentName": self.studies[rid.split("-")[1]]}
        if kind == "series":
            return {"ID": rid, "ParentStudy": rid[3:]}
        if kind == "patients":
            return {"ID": rid, "Type": "Patient", "LastUpdate": "20261129T000000",
                    "Studies": [s for s, p in self.patient.items() if p == rid]}
        raise KeyError(uri)

    def post(self, uri: str, body: Any) -> Any:
        self.calls.append(uri)
        if uri == "/tools/lookup":
            return [{"Type": "Study", "ID": s} for s in self.studies if self.uid(s) == body]
        request = json.loads(body)
        assert uri == "/tools/find"
        self.last_find = request
        level = listing.FIND_LEVELS[request["Level"].lower()]
        uid = request.get("Query", {}).get("StudyInstanceUID")
        ids = self.ids(level)
        if uid:
            ids = [i for i in ids if self.uid(_study_of(i)) == uid] if level != "patients" else []
        if "Limit" in request:
            ids = ids[request.get("Since", 0):][:request["Limit"]]
        return json.dumps(ids)


def _study_of(rid: str) -> str:
    return rid.split("-")[1] if rid.startswith(("se-", "i-")) else rid


def grants(*items: tuple[list[str], list[str] | None]) -> tuple[Any, ...]:
    return from_claims({"grants": [{"kind": "role", "role": "r", "permissions": p,
                                    "scope": {"departments": d} if d else {}} for p, d in items]})


CARDIO = grants((["view"], ["Cardio"]))
EVERYWHERE = grants((["view"], None))


@pytest.fixture
def archive() -> Archive:
    return Archive()


@pytest.fixture
def lister(archive: Archive) -> Lister:
    return Lister(archive.get, archive.post, StudyResolver(archive.get, archive.post))


def ids(answer: listing.Answer) -> list[Any]:
    assert answer.status == 200
    return json.loads(answer.body)


def cardio(level: str) -> list[str]:
    studies = [f"s{i}" for i, d in enumerate(DEPTS) if d == "Cardio"]
    if level == "studies":
        return studies
    if level == "series":
        return [f"se-{s}" for s in studies]
    if level == "instances":
        return [f"i-{s}-{k}" for s in studies for k in "ab"]
    return ["p-mix", "p3", "p7"]


# ------------------------------------------------------------------ the paging algorithm


@pytest.mark.parametrize("since, limit, expected", [
    (0, None, [1, 3, 5, 7, 9]), (0, 2, [1, 3]), (2, 2, [5, 7]), (4, 2, [9]), (5, 2, []), (99, 1, []),
    (0, 0, []), (1, None, [3, 5, 7, 9]),
])
def test_page_counts_positions_in_the_filtered_list(since: int, limit: int | None, expected: list[int]) -> None:
    assert page(range(10), lambda i: i % 2 == 1, since, limit) == expected  # type: ignore[arg-type]


def test_page_stops_testing_once_full() -> None:
    tested: list[int] = []
    page(range(1000), lambda i: tested.append(i) or True, 0, 3)  # type: ignore[arg-type, func-returns-value]
    assert tested == [0, 1, 2]


def test_pages_cover_the_list_without_overlap_or_gap() -> None:
    visible = lambda i: i % 3 == 0  # noqa: E731
    full = page(range(100), visible)  # type: ignore[arg-type]
    for size in (1, 2, 7):
        got: list[int] = []
        since = 0
        while chunk := page(range(100), visible, since, size):  # type: ignore[arg-type]
            assert len(chunk) == size or since + len(chunk) == len(full)  # short only at the end
            got.extend(chunk)
            since += size
        assert got == full


# ------------------------------------------------------------------ GET /{level}


@pytest.mark.parametrize("level", listing.LIST_LEVELS)
def test_restricted_token_lists_only_in_scope(lister: Lister, level: str) -> None:
    assert ids(lister.list_resources(level, {}, CARDIO)) == cardio(level)


@pytest.mark.parametrize("level", listing.LIST_LEVELS)
def test_unrestricted_token_gets_the_core_answer_unchanged(lister: Lister, archive: Archive, level: str) -> None:
    answer = lister.list_resources(level, {"expand": "", "limit": "2", "since": "1"}, EVERYWHERE)
    assert answer.body == archive.get(f"/{level}?expand&limit=2&since=1").encode()  # passed through, raw


def test_expanded_patient_lists_only_visible_studies(lister: Lister) -> None:
    expanded = ids(lister.list_resources("patients", {"expand": ""}, CARDIO))
    assert [p["ID"] for p in expanded] == ["p-mix", "p3", "p7"]
    assert expanded[0]["Studies"] == ["s0"]  # s1 (Other) is not shown


def test_expand_passes_only_format_options(lister: Lister, archive: Archive) -> None:
    ids(lister.list_resources("studies", {"expand": "", "full": "", "requestedTags": "0008,1040", "x": "1"}, CARDIO))
    assert "/studies/s0?full" in archive.calls


@pytest.mark.parametrize("level", ["studies", "instances", "patients"])
def test_limit_since_after_filtering(lister: Lister, level: str) -> None:
    full = cardio(level)
    got = []
    for since in range(len(full) + 1):
        got += ids(lister.list_resources(level, {"limit": "1", "since": str(since)}, CARDIO))
    assert got == full
    assert ids(lister.list_resources(level, {"limit": "0", "since": "0"}, CARDIO)) == []
    assert ids(lister.list_resources(level, {"limit": "5", "since": "999"}, CARDIO)) == []


@pytest.mark.parametrize("get", [
    {"limit": "-1", "since": "0"}, {"limit": "1"}, {"since": "0"}, {"limit": "abc", "since": "0"},
    {"limit": "99999999999", "since": "0"}, {"limit": "1", "since": "-1"}, {"limit": "1.0", "since": "0"},
    {"limit": " 1", "since": "0"}, {"limit": "0x10", "since": "0"}, {"limit": "", "since": "0"},
    {"limit": "\u0661", "since": "0"},  # an Arabic-Indic digit: int() would take it
])
def test_bad_paging_is_refused(lister: Lister, get: dict[str, str]) -> None:
    with pytest.raises(Refused) as err:
        lister.list_resources("studies", get, CARDIO)
    assert err.value.status == 400


def test_expand_spelled_otherwise_is_not_expand(lister: Lister) -> None:
    assert ids(lister.list_resources("studies", {"Expand": ""}, CARDIO)) == cardio("studies")


def test_no_view_grant_sees_nothing(lister: Lister) -> None:
    assert ids(lister.list_resources("studies", {}, grants((["download"], None)))) == []
    assert ids(lister.list_resources("studies", {}, ())) == []


def test_grants_of_different_permissions(lister: Lister, archive: Archive) -> None:
    """An unrestricted grant without view adds nothing to a listing; an unrestricted view grant makes it the
    core's answer; two scoped view grants add up."""
    mixed = grants((["download"], None), (["view"], ["Cardio"]))
    assert ids(lister.list_resources("studies", {}, mixed)) == cardio("studies")
    both = grants((["view"], ["Cardio"]), (["view", "delete"], ["Neuro"]))
    assert ids(lister.list_resources("studies", {}, both)) == [s for s, d in archive.studies.items() if d != "Other"]
    assert lister.list_resources("studies", {}, grants((["view"], None), (["view"], ["Cardio"]))).body == \
        archive.get("/studies").encode()


# ------------------------------------------------------------------ POST /tools/find


def find(lister: Lister, body: Any, g: Any = CARDIO) -> list[Any]:
    return ids(lister.find(json.dumps(body) if not isinstance(body, str | bytes) else body, g))


@pytest.mark.parametrize("level, key", [("Study", "studies"), ("series", "series"), ("INSTANCE", "instances"),
                                        ("Patient", "patients")])
def test_find_filters_every_level(lister: Lister, level: str, key: str) -> None:
    assert find(lister, {"Level": level, "Query": {}}) == cardio(key)
    expanded = find(lister, {"Level": level, "Query": {}, "Expand": True})
    assert [e["ID"] for e in expanded] == cardio(key)


@pytest.mark.parametrize("key", ["StudyDescription", "0008,1030", "AccessionNumber", "StudyDate", "Modality",
                                 "SeriesDescription", "InstitutionName", "0008,0080", "patientname", "PATIENTID",
                                 "StudyInstanceUID"])
def test_a_patient_level_find_may_not_query_study_or_series_tags(lister: Lister, key: str) -> None:
    """Attack review: Orthanc matches a patient when ANY of its studies matches a study-level key, so
    ``{"Level": "Patient", "Query": {"PatientID": "P1", "StudyDescription": "ONCO*"}}`` answered yes/no about
    another department's study of a patient the token sees.  Only the patient's own tags are allowed
    (exact spellings: another case is refused, never guessed)."""
    with pytest.raises(Refused) as refused:
        lister.find(json.dumps({"Level": "Patient", "Query": {"PatientID": "*", key: "ONCO*"}}), CARDIO)
    assert refused.value.status == 400 and key in refused.value.reason


@pytest.mark.parametrize("query", [{"PatientName": "*"}, {"0010,0020": "*", "PatientBirthDate": "19700101-"},
                                   {"PatientSex": "F", "OtherPatientIDs": "*", "0010,1000": "*"}])
def test_a_patient_level_find_on_patient_tags_is_answered(lister: Lister, query: dict[str, str]) -> None:
    lister.find(json.dumps({"Level": "Patient", "Query": query}), CARDIO)


def test_an_unrestricted_patient_level_find_is_the_cores(lister: Lister, archive: Archive) -> None:
    body = json.dumps({"Level": "Patient", "Query": {"StudyDescription": "*"}})
    assert lister.find(body, EVERYWHERE).status == 200


def test_an_expanded_patient_hides_its_last_update(lister: Lister) -> None:
    """LastUpdate moves when another department stores a study of the patient (attack review)."""
    expanded = find(lister, {"Level": "Patient", "Query": {}, "Expand": True})
    assert expanded and all("LastUpdate" not in e for e in expanded)


def test_find_naming_an_out_of_scope_study(lister: Lister, archive: Archive) -> None:
    for level in ("Study", "Series", "Instance"):
        assert find(lister, {"Level": level, "Query": {"StudyInstanceUID": "1.2.1"}, "CaseSensitive": False}) == []
    assert find(lister, {"Level": "Study", "Query": {"StudyInstanceUID": "1.2.0"}}) == ["s0"]


def test_find_pages_after_filtering_and_asks_the_core_for_everything(lister: Lister, archive: Archive) -> None:
    full = cardio("instances")
    got = []
    for since in range(len(full) + 1):
        got += find(lister, {"Level": "Instance", "Query": {}, "Limit": 1, "Since": since})
        assert archive.last_find.get("Limit", 0) >= listing.FIND_PROBE_MIN  # a probe, never the client's page
        assert "Since" not in archive.last_find and archive.last_find.get("Expand") is None
    assert got == full
    assert find(lister, {"Level": "Instance", "Query": {}, "Limit": 0}) == full  # 0: no limit (as the core)
    assert find(lister, {"Level": "Instance", "Query": {}, "limit": 1}) == full  # keys are case-sensitive
    assert archive.last_find["limit"] == 1  # ... and other keys reach the core unchanged


@pytest.mark.parametrize("extra", [
    {"Limit": -1}, {"Limit": "1"}, {"Limit": 1.5}, {"Limit": True}, {"Since": -3}, {"Since": None},
    {"Limit": 2**40}, {"Expand": "yes"}, {"Expand": [1]}, {"Level": "Everything"}, {"Level": 3}, {"Level": None},
])
def test_find_odd_parameters_are_refused(lister: Lister, extra: dict[str, Any]) -> None:
    with pytest.raises(Refused) as err:
        lister.find(json.dumps({"Level": "Study", "Query": {}, **extra}), CARDIO)
    assert err.value.status == 400


@pytest.mark.parametrize("body", ["[1]", "not json", b"\xff\xfe", "null", '"Study"'])
def test_find_bodies_that_are_not_objects(lister: Lister, body: Any) -> None:
    with pytest.raises(Refused):
        lister.find(body, CARDIO)


def test_find_unrestricted_is_passed_through_untouched(lister: Lister, archive: Archive) -> None:
    body = json.dumps({"Level": "Study", "Query": {}, "Limit": 2, "Since": 1})
    assert lister.find(body, EVERYWHERE).body == archive.post("/tools/find", body).encode()


def test_warm_cache_costs_no_rest_call_per_resource(lister: Lister, archive: Archive) -> None:
    find(lister, {"Level": "Instance", "Query": {}})
    archive.calls.clear()
    find(lister, {"Level": "Instance", "Query": {}})
    assert archive.calls == ["/tools/find"]


# ------------------------------------------------------------------ grants of a token


@pytest.mark.parametrize("method, path, served", [
    ("GET", "/studies", True), ("GET", "/studies/", True), ("POST", "/tools/find", True),
    ("GET", "/dicom-web/studies", True), ("GET", "/dicom-web/series", True), ("GET", "/dicom-web/instances/", True),
    ("GET", "/Studies", False), ("GET", "/studies//", False), ("GET", "/tools/find", False),
    ("POST", "/tools/lookup", False), ("POST", "/tools/count-resources", False), ("GET", "/changes", False),
    ("POST", "/dicom-web/studies", False), ("GET", "/dicom-web/studies/1.2.3", False), ("GET", "/jobs", False),
    ("GET", INTERNAL_ROOT + "studies", False),
])
def test_only_the_served_routes_are_let_through(method: str, path: str, served: bool) -> None:
    assert filtered_listing(method, path) is served
    if served:  # a scoped token gets through to the callback only where the plugin filters
        scoped = {"permissions": ["view"], "grants": [{"kind": "role", "role": "r", "permissions": ["view"],
                                                     "scope": {"departments": ["Cardio"]}}]}
        assert judge(scoped, method, path, None, lambda _t: [], filtered_listings=True).allow
        assert not judge(scoped, method, path, None, lambda _t: []).allow  # the official plugin's web service


# ------------------------------------------------------------------ /dicom-web/ and the internal root


@pytest.mark.parametrize("uri", [
    INTERNAL_ROOT + "studies", INTERNAL_ROOT.upper(), "/PACS-Bridge-Internal/x", "/pacs%2Dbridge%2Dinternal/",
    "/pacs%252Dbridge-internal/", "//pacs-bridge-internal//dicom-web", "/a/../pacs-bridge-internal/",
    "/pacs_bridge_internal/", "\\pacs-bridge-internal\\", "/pacs-bridge-intern%61l/",
])
def test_internal_root_spellings_are_recognised(uri: str) -> None:
    assert looks_internal(uri)


def test_public_paths_are_not_internal() -> None:
    assert not looks_internal("/dicom-web/studies")
    assert not looks_internal("/studies/pacs-bridge")


def test_passes_are_single_use_loopback_and_exact() -> None:
    clock = [0.0]
    passes = Passes(seconds=10, clock=lambda: clock[0])
    header = passes.issue("ctx")
    assert passes.redeem(header, "/dicom-web/studies", "127.0.0.1") is None  # not the internal root
    assert passes.redeem(header, INTERNAL_ROOT + "studies", "10.0.0.5") is None  # not loopback
    assert passes.redeem("Bearer " + header.split()[1], INTERNAL_ROOT + "studies", "127.0.0.1") is None
    assert passes.redeem(header, INTERNAL_ROOT + "studies", "127.0.0.1") == "ctx"
    assert passes.redeem(header, INTERNAL_ROOT + "studies", "127.0.0.1") is None  # used
    late = passes.issue("ctx2")
    clock[0] = 11
    assert passes.redeem(late, INTERNAL_ROOT + "studies", "::1") is None  # expired
    assert passes.redeem(None, INTERNAL_ROOT, "127.0.0.1") is None
    assert passes.redeem(dicomweb.PASS_SCHEME + " ", INTERNAL_ROOT, "127.0.0.1") is None


def test_urls_are_rewritten_to_the_public_root() -> None:
    doc = [{"00081190": {"vr": "UR", "Value": [f"http://h:8042{INTERNAL_ROOT}studies/1.2"]},
            "00081030": {"vr": "LO", "Value": [f"see {INTERNAL_ROOT}"]},
            "7FE00010": {"vr": "OW", "BulkDataURI": f"https://h{INTERNAL_ROOT}studies/1/bulk/7fe00010"},
            "00400275": {"vr": "SQ", "Value": [{"x": {"BulkDataURI": f"{INTERNAL_ROOT}a"}}]}}]
    rewrite_urls(doc)
    assert doc[0]["00081190"]["Value"] == ["http://h:8042/dicom-web/studies/1.2"]
    assert doc[0]["7FE00010"]["BulkDataURI"] == "https://h/dicom-web/studies/1/bulk/7fe00010"
    assert doc[0]["00400275"]["Value"][0]["x"]["BulkDataURI"] == "/dicom-web/a"
    assert doc[0]["00081030"]["Value"] == [f"see {INTERNAL_ROOT}"]  # a value is data, never rewritten


class Plugin:
    """The DICOMweb plugin at the internal root: QIDO over the archive's studies, offset/limit, and a record."""

    def __init__(self, archive: Archive, passes: Passes) -> None:
        self.archive, self.passes = archive, passes
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, method: str, target: str, headers: Any, body: bytes | None) -> tuple[int, str, bytes]:
        assert target.startswith(INTERNAL_ROOT)
        assert self.passes.redeem(headers["authorization"], target, "127.0.0.1") == "ctx"
        self.seen.append((method, target, dict(headers)))
        path, _, query = target.partition("?")
        args = dict(p.split("=", 1) for p in query.split("&") if p)
        if path.endswith("/metadata"):
            doc = [{"7FE00010": {"BulkDataURI": INTERNAL_ROOT + "x"}}]
            return 200, "application/dicom+json", json.dumps(doc).encode()
        if not path.endswith(("studies", "series", "instances")):
            return 200, 'multipart/related; type="application/dicom"; boundary=b', b"--b\r\n\r\nDICM\r\n--b--"
        items = [{"0020000D": {"vr": "UI", "Value": [self.archive.uid(s)]},
                  "00081190": {"vr": "UR", "Value": [f"http://x{INTERNAL_ROOT}studies/{self.archive.uid(s)}"]}}
                 for s in self.archive.studies]
        offset, limit = int(args.get("offset", 0)), args.get("limit")
        items = items[offset:] if limit is None else items[offset:offset + int(limit)]
        return 200, "application/dicom+json", json.dumps(items).encode()


@pytest.fixture
def proxy(archive: Archive) -> tuple[Proxy, Plugin]:
    passes = Passes()
    plugin = Plugin(archive, passes)
    return Proxy(plugin, StudyResolver(archive.get, archive.post), passes), plugin


def qido_uids(answer: listing.Answer) -> list[str]:
    return [d["0020000D"]["Value"][0] for d in json.loads(answer.body)]


def test_qido_is_filtered_and_paged(proxy: tuple[Proxy, Plugin], archive: Archive) -> None:
    p, plugin = proxy
    inside = [archive.uid(s) for s in cardio("studies")]
    assert qido_uids(p.serve("ctx", "GET", "/dicom-web/studies", {}, {}, None, CARDIO)) == inside
    got = []
    for offset in range(4):
        got += qido_uids(p.serve("ctx", "GET", "/dicom-web/series", {"limit": "1", "offset": str(offset)}, {},
                                 None, CARDIO))
    assert got == inside
    assert "includefield=0020000D" in plugin.seen[-1][1] and "offset=" in plugin.seen[-1][1]
    p.serve("ctx", "GET", "/dicom-web/studies", {"includefield": "00081030", "fuzzymatching": "true"}, {}, None,
            CARDIO)
    assert "includefield=00081030,0020000D" in plugin.seen[-1][1] and "fuzzymatching=true" in plugin.seen[-1][1]
    body = p.serve("ctx", "GET", "/dicom-web/studies", {}, {}, None, CARDIO).body
    assert INTERNAL_ROOT.encode() not in body and b"/dicom-web/studies/" in body
    assert p.serve("ctx", "GET", "/dicom-web/studies", {"limit": "0"}, {}, None, CARDIO).body == b"[]"
    for bad in ("-1", "x", "1e3"):
        with pytest.raises(Refused):
            p.serve("ctx", "GET", "/dicom-web/studies", {"limit": bad}, {}, None, CARDIO)


def test_qido_unrestricted_and_wado_pass_through(proxy: tuple[Proxy, Plugin], archive: Archive) -> None:
    p, plugin = proxy
    everything = p.serve("ctx", "GET", "/dicom-web/studies", {"limit": "2"}, {"accept": "application/dicom+json",
                                                                              "authorization": "Bearer secret",
                                                                              "cookie": "c=1"}, None, EVERYWHERE)
    assert len(qido_uids(everything)) == 2 and INTERNAL_ROOT.encode() not in everything.body
    sent = plugin.seen[-1][2]
    assert sent["authorization"].startswith(dicomweb.PASS_SCHEME) and "cookie" not in sent
    retrieve = p.serve("ctx", "GET", "/dicom-web/studies/1.2.0", {}, {}, None, CARDIO)
    assert isinstance(retrieve, dicomweb.Multipart)  # passed on part by part
    assert (retrieve.subtype, retrieve.part_type, list(retrieve.parts)) == ("related", "application/dicom", [b"DICM"])
    metadata = p.serve("ctx", "GET", "/dicom-web/studies/1.2.0/metadata", {}, {}, None, CARDIO)
    assert json.loads(metadata.body)[0]["7FE00010"]["BulkDataURI"] == "/dicom-web/x"


def test_qido_cost_with_a_warm_cache(proxy: tuple[Proxy, Plugin], archive: Archive) -> None:
    p, _ = proxy
    p.serve("ctx", "GET", "/dicom-web/studies", {}, {}, None, CARDIO)
    archive.calls.clear()
    p.serve("ctx", "GET", "/dicom-web/studies", {}, {}, None, CARDIO)
    assert archive.calls == []


def test_resolver_is_shared_and_invalidated(lister: Lister, archive: Archive) -> None:
    find(lister, {"Level": "Study", "Query": {}})
    archive.studies["s1"] = "Cardio"  # moved (deleted and stored again under another department)
    lister.resolver.changed("deleted")
    assert "s1" in find(lister, {"Level": "Study", "Query": {}})
    assert lister.resolver.cached(Target("studies", "s1")) is not None


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 16])
def test_multipart_parts_are_read_one_at_a_time(block: int) -> None:
    import io

    parts = [b"DICM" + bytes(range(256)) * 3, b"", b"\r\n--notboundary\r\n", b"x" * 1000]
    body = b"preamble\r\n" + b"".join(b"--bnd\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                                       for p in parts) + b"--bnd--\r\nepilogue"
    assert list(dicomweb.iter_parts(io.BytesIO(body), "bnd", block)) == parts
    with pytest.raises(ValueError):
        list(dicomweb.iter_parts(io.BytesIO(body[:-40]), "bnd", block))
    with pytest.raises(ValueError):
        list(dicomweb.iter_parts(io.BytesIO(b"no delimiter"), "bnd", block))


@pytest.mark.parametrize("mime, expected", [
    ('multipart/related; type="application/dicom"; boundary=abc', ("related", "application/dicom", "abc")),
    ("multipart/related; type=application/octet-stream; boundary=\"a b\"", ("related", "application/octet-stream",
                                                                        "a b")),
    ("multipart/related; boundary=abc", None), ("application/dicom+json", None), ("multipart/related; type=x", None),
])
def test_multipart_params(mime: str, expected: Any) -> None:
    assert dicomweb.multipart_params(mime) == expected


def test_generated_orthanc_config_moves_the_dicomweb_root_only_with_the_plugin(tmp_path: Any) -> None:
    from bridge.deploy.orthanc_config import orthanc_config

    common = {"name": "t", "aet": "T", "http_port": 1, "dicom_port": 2, "storage_dir": tmp_path, "index_dir": tmp_path,
              **TLS}
    with_plugin = orthanc_config(**common, python_script=tmp_path / "p.py")
    assert with_plugin["DicomWeb"]["Root"] == INTERNAL_ROOT
    assert looks_internal(with_plugin["DicomWeb"]["Root"])  # the filter refuses it from outside
    assert orthanc_config(**common, with_filter=False)["DicomWeb"]["Root"] == "/dicom-web/"


def test_a_decoded_path_is_encoded_again_for_the_inner_request(proxy: tuple[Proxy, Plugin]) -> None:
    p, plugin = proxy
    p.serve("ctx", "GET", "/dicom-web/studies/1.2 3/metadata", {"x": "a%20b"}, {}, None, EVERYWHERE)
    assert plugin.seen[-1][1] == INTERNAL_ROOT + "studies/1.2%203/metadata?x=a%20b"


@pytest.mark.parametrize("factor, minimum", [(1, 1), (1, 2), (2, 3), (8, 1), (100, 1)])
def test_find_probe_then_the_whole_list(lister: Lister, archive: Archive, monkeypatch: Any, factor: int,
                                        minimum: int) -> None:
    """Whatever the probe's size, every page is the one the whole filtered list gives; a probe that holds
    too few visible results is followed by the unpaged query."""
    monkeypatch.setattr(listing, "FIND_PROBE_FACTOR", factor)
    monkeypatch.setattr(listing, "FIND_PROBE_MIN", minimum)
    full = cardio("instances")
    for size in (1, 2, 4):
        for since in range(len(full) + 1):
            archive.calls.clear()
            got = find(lister, {"Level": "Instance", "Query": {}, "Limit": size, "Since": since})
            assert got == full[since:since + size], (size, since)
            assert 1 <= archive.calls.count("/tools/find") <= 2


@pytest.mark.parametrize("path", ["/changes", "/exports", "/changes/"])
def test_a_scoped_settings_grant_does_not_open_the_server_wide_feeds(path: str) -> None:
    """Attack review: /changes and /exports list every resource's Orthanc id and arrival time, out-of-scope
    studies included; `settings` is scope-free for the tools, not for these feeds."""
    def claims(scope: dict[str, list[str]]) -> dict[str, Any]:
        return {"permissions": ["settings"], "grants": [{"kind": "role", "role": "r", "permissions": ["settings"],
                                                          "scope": scope}]}

    assert not judge(claims({"departments": ["Cardio"]}), "GET", path, None, lambda _t: [],
                     filtered_listings=True).allow
    assert judge(claims({}), "GET", path, None, lambda _t: []).allow
