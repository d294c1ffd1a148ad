"""The two route holes of the hardening issue, at the level of the route table and ``decide()``.

1. SEND must not define, change or delete network peers (modalities, Orthanc peers, DICOMweb
   servers), nor query/retrieve from them, nor use the DICOMweb HTTP proxies.
2. VIEW must not return whole DICOM files: WADO-RS retrieve, WADO-URI ``application/dicom`` and
   the instance-level ``modify`` / ``anonymize`` answers need DOWNLOAD.

Each case is tried with the spellings a client could use to get around a rule: trailing slash,
case, HEAD, encoded characters, repeated and mixed-case query parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from bridge.core import routes
from bridge.core.permissions import Permission as P
from bridge.core.permissions import expand
from bridge.core.verifier import decide

QR = "q-r-remote-modalities"
EVERYTHING_BUT_ADMIN = [p.value for p in P if p is not P.ADMIN]


def held(*perms: str) -> dict[str, Any]:
    """Claims carrying the permissions in one grant (with implications, as the token service issues them)."""
    names = sorted(p.value for p in expand(list(perms)))
    return {"sub": "u", "grants": [{"kind": "role", "role": "r", "permissions": names, "scope": {}}]}


def allowed(perms: Iterable[str], method: str, path: str, query: dict[str, str] | None = None) -> bool:
    return decide(held(*perms), method, path, query).allow


# ------------------------------------------------------------------ 1. peers


PEER_DEFINITIONS = [
    ("PUT", "/modalities/evil"),
    ("DELETE", "/modalities/evil"),
    ("PUT", "/peers/evil"),
    ("DELETE", "/peers/evil"),
    ("PUT", "/dicom-web/servers/evil"),
    ("DELETE", "/dicom-web/servers/evil"),
]


@pytest.mark.parametrize(("method", "path"), PEER_DEFINITIONS)
@pytest.mark.parametrize("suffix", ["", "/"])
def test_send_cannot_define_peers(method: str, path: str, suffix: str) -> None:
    assert not allowed(["send"], method, path + suffix)
    assert not allowed(["send", QR], method, path + suffix)
    assert not allowed(EVERYTHING_BUT_ADMIN, method, path + suffix)
    assert allowed(["admin"], method, path + suffix)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/modalities/x/configuration"),
        ("GET", "/peers/x/configuration"),
        ("POST", "/tools/dicom-echo"),  # an echo to a host given in the body: a network probe
    ],
)
def test_peer_configuration_is_admin(method: str, path: str) -> None:
    assert not allowed(EVERYTHING_BUT_ADMIN, method, path)
    assert allowed(["admin"], method, path)


@pytest.mark.parametrize(
    "query",
    [{"expand": ""}, {"Expand": ""}, {"expand": "false"}, {"EXPAND": "1", "x": "y"}],
)
@pytest.mark.parametrize("path", ["/modalities", "/peers", "/dicom-web/servers"])
def test_expanded_peer_lists_show_hosts_only_to_admin(path: str, query: dict[str, str]) -> None:
    assert allowed(["send"], "GET", path)
    assert not allowed(["send", QR], "GET", path, query)
    assert not allowed(["send"], "GET", path + "?expand")
    assert not allowed(["send"], "GET", path + "?a=1&%65xpand")  # percent-encoded key
    assert allowed(["admin"], "GET", path, query)


@pytest.mark.parametrize(
    "path",
    [
        "/modalities/x/store",
        "/modalities/x/store-straight",
        "/modalities/x/storage-commitment",
        "/peers/x/store",
        "/peers/x/store-straight",
        "/dicom-web/servers/x/stow",
    ],
)
def test_send_pushes_to_configured_peers(path: str) -> None:
    assert allowed(["send"], "POST", path)
    assert allowed(["send"], "POST", path + "/")
    assert not allowed(["view", QR, "download"], "POST", path)
    for method in ("PUT", "DELETE", "GET"):
        assert not allowed(["send"], method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/modalities/x/query"),
        ("POST", "/modalities/x/find"),
        ("POST", "/modalities/x/find-patient"),
        ("POST", "/modalities/x/find-study"),
        ("POST", "/modalities/x/find-series"),
        ("POST", "/modalities/x/find-instance"),
        ("POST", "/modalities/x/find-worklist"),
        ("POST", "/modalities/x/move"),
        ("GET", "/queries"),
        ("GET", "/queries/q1"),
        ("GET", "/queries/q1/answers"),
        ("GET", "/queries/q1/answers/0/content"),
        ("POST", "/queries/q1/retrieve"),
        ("POST", "/queries/q1/answers/0/retrieve"),
        ("POST", "/queries/q1/answers/0/query-studies"),
        ("DELETE", "/queries/q1"),
        ("POST", "/dicom-web/servers/x/qido"),
        ("POST", "/dicom-web/servers/x/retrieve"),
    ],
)
def test_query_retrieve_needs_its_own_permission(method: str, path: str) -> None:
    assert not allowed(["send"], method, path)
    assert not allowed(["send", "download", "upload", "view"], method, path)
    assert allowed([QR], method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/dicom-web/servers/x/get"),
        ("POST", "/dicom-web/servers/x/post"),
        ("GET", "/dicom-web/servers/x/wado"),
        ("POST", "/dicom-web/servers/x/delete"),
        ("GET", "/dicom-web/servers/x/get"),
        ("POST", "/dicom-web/servers/x/get/"),
        ("POST", "/dicom-web/servers/x/GET"),
        ("POST", "/dicom-web/servers/x/y/get"),
        ("POST", "/modalities/x/unknown"),
        ("POST", "/modalities/x/store/more"),
        ("POST", "/transfers/chunks/abc"),
        ("GET", "/transfers/chunks/abc"),
    ],
)
def test_proxies_and_unknown_peer_routes_are_denied(method: str, path: str) -> None:
    assert not allowed([p.value for p in P], method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/modalities"),
        ("GET", "/modalities/x"),
        ("POST", "/modalities/x/echo"),
        ("GET", "/peers"),
        ("GET", "/peers/x"),
        ("GET", "/peers/x/system"),
        ("GET", "/dicom-web/servers"),
        ("GET", "/dicom-web/servers/x"),
    ],
)
def test_peer_names_and_echo_for_whoever_uses_peers(method: str, path: str) -> None:
    """Names and the operations list (no host, no port) are what a send or Q/R dialog shows."""
    for perms in (["send"], [QR], ["admin"]):
        if path.startswith("/peers") and perms == [QR]:
            continue  # Orthanc peers are only pushed to: no Q/R over them
        assert allowed(perms, method, path), (perms, method, path)
    assert not allowed(["view", "download", "upload", "modify"], method, path)


def test_mixed_case_and_encoded_peer_paths_are_denied() -> None:
    every = [p.value for p in P]
    for path in ("/Modalities/x", "/MODALITIES/x", "/modalities%2fx", "/modalities/x%2Fstore",
                 "/peers/x/%2e%2e/y", "/dicom-web/Servers/x"):
        assert not allowed(every, "PUT", path), path


# ------------------------------------------------------------------ 2. whole files


STUDY = "/dicom-web/studies/1.2.3"
SERIES = STUDY + "/series/1.2.3.4"
INSTANCE = SERIES + "/instances/1.2.3.4.5"


@pytest.mark.parametrize("path", [STUDY, SERIES, INSTANCE])
@pytest.mark.parametrize("suffix", ["", "/", "?accept=application/dicom"])
def test_wado_rs_retrieve_needs_download(path: str, suffix: str) -> None:
    assert not allowed(["view"], "GET", path + suffix)
    assert not allowed(["view"], "HEAD", path + suffix)
    assert allowed(["download"], "GET", path + suffix)


@pytest.mark.parametrize(
    "path",
    [
        STUDY + "/metadata", SERIES + "/metadata", INSTANCE + "/metadata",
        STUDY + "/rendered", SERIES + "/rendered", INSTANCE + "/rendered",
        INSTANCE + "/frames/1", INSTANCE + "/frames/1,2,3", INSTANCE + "/frames/1/rendered",
        INSTANCE + "/bulk/7fe00010", "/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances",
        STUDY + "/series", STUDY + "/instances", SERIES + "/instances",
        "/dicom-web/studies?PatientID=1", "/dicom-web/info",
    ],
)
def test_wado_rs_metadata_rendered_frames_are_view(path: str) -> None:
    assert allowed(["view"], "GET", path)
    assert allowed(["view"], "GET", path + "/") or "?" in path


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/1.2.3/series/4/instances/5/file",
        "/dicom-web/series/1.2.3",           # not a route of the plugin
        "/dicom-web/instances/1.2.3",
        "/dicom-web/studies/1.2.3/series/4/instances/5/frames/1/raw",
        "/dicom-web/studies/1.2.3/series/4/instances/5/thumbnail",
    ],
)
def test_unlisted_dicomweb_paths_are_denied(path: str) -> None:
    assert not allowed(["view"], "GET", path)


def test_stow_is_upload_only_where_the_plugin_takes_it() -> None:
    assert allowed(["upload"], "POST", "/dicom-web/studies")
    assert allowed(["upload"], "POST", STUDY)
    assert not allowed(["upload"], "POST", SERIES)
    assert not allowed(["upload"], "POST", INSTANCE)


WADO = "/wado"
WADO_Q = {"requestType": "WADO", "studyUID": "1", "seriesUID": "2", "objectUID": "3"}


@pytest.mark.parametrize(
    "extra",
    [
        {"contentType": "application/dicom"},
        {"contentType": "application/DICOM"},
        {"contentType": "application/dicom; transfer-syntax=*"},
        {"ContentType": "application/dicom"},
        {"CONTENTTYPE": "application/dicom"},
        {"contentType": ""},
        {"contentType": "image/jpeg, application/dicom"},
        {"contentType": "text/html"},
    ],
)
def test_wado_uri_file_needs_download(extra: dict[str, str]) -> None:
    query = {**WADO_Q, **extra}
    assert not allowed(["view"], "GET", WADO, query)
    assert allowed(["download"], "GET", WADO, query)


@pytest.mark.parametrize(
    "raw",
    [
        "contentType=application/dicom",
        "contentType=application%2Fdicom",
        "content%54ype=application/dicom",
        "contentType=image/jpeg&contentType=application/dicom",
        "contentType=application/dicom&contentType=image/jpeg",  # the plugin takes the last; deny anyway
        "contentType=image/png&CONTENTTYPE=application/dicom",
        "contentType=application/dicom&requestType=WADO",
    ],
)
def test_wado_uri_raw_query_strings(raw: str) -> None:
    path = WADO + "?requestType=WADO&objectUID=3&" + raw
    assert not allowed(["view"], "GET", path)
    assert not allowed(["view"], "GET", WADO + "/?" + raw)
    assert allowed(["download"], "GET", path)


@pytest.mark.parametrize(
    "query",
    [
        WADO_Q,
        {**WADO_Q, "contentType": "image/jpeg"},
        {**WADO_Q, "contentType": "image/jpg"},
        {**WADO_Q, "contentType": "image/png"},
    ],
)
def test_wado_uri_images_are_view(query: dict[str, str]) -> None:
    assert allowed(["view"], "GET", WADO, query)


def test_wado_uri_query_in_both_places_any_file_request_wins() -> None:
    assert not allowed(["view"], "GET", WADO + "?contentType=application/dicom", {"contentType": "image/png"})
    assert not allowed(["view"], "GET", WADO + "?contentType=image/png", {"contentType": "application/dicom"})


def test_wado_uri_decision_is_not_memoised_across_queries() -> None:
    assert allowed(["view"], "GET", WADO, {"contentType": "image/png"})
    assert not allowed(["view"], "GET", WADO, {"contentType": "application/dicom"})
    assert allowed(["view"], "GET", WADO, {"contentType": "image/png"})


@pytest.mark.parametrize("action", ["modify", "anonymize"])
def test_instance_level_modify_and_anonymize_also_need_download(action: str) -> None:
    path = f"/instances/abc/{action}"
    assert not allowed([action], "POST", path)
    assert not allowed([action], "POST", path + "/")
    assert not allowed(["download"], "POST", path)
    assert allowed([action, "download"], "POST", path)
    d = decide(held(action), "POST", path)
    assert d.error == "insufficient_scope" and "download" in d.reason
    # study/series/patient level stores the result in the PACS: no file in the answer
    for level in ("patients", "studies", "series"):
        assert allowed([action], "POST", f"/{level}/abc/{action}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/instances/abc/file"),
        ("GET", "/instances/abc/attachments/dicom/data"),
        ("GET", "/instances/abc/attachments/dicom/compressed-data"),
        ("GET", "/instances/abc/attachments/dicom-until-pixel-data/data"),
        ("GET", "/studies/abc/attachments/1024/data"),
        ("GET", "/studies/abc/archive"),
        ("POST", "/studies/abc/archive"),
        ("GET", "/series/abc/media"),
        ("GET", "/patients/abc/archive"),
        ("POST", "/tools/create-archive"),
        ("GET", "/tools/create-archive"),
        ("POST", "/tools/create-media"),
        ("POST", "/tools/create-media-extended"),
        ("GET", "/instances/abc/file/"),
        ("HEAD", "/instances/abc/file"),
    ],
)
def test_whole_files_need_download(method: str, path: str) -> None:
    assert not allowed(["view"], method, path)
    assert allowed(["download"], method, path)


def test_job_outputs_need_admin_and_download() -> None:
    assert not allowed(["admin"], "GET", "/jobs/j1/archive")
    assert not allowed(["download"], "GET", "/jobs/j1/archive")
    assert allowed(["admin", "download"], "GET", "/jobs/j1/archive")
    assert allowed(["admin"], "GET", "/jobs/j1")
    assert allowed(["admin"], "POST", "/jobs/j1/cancel")


@pytest.mark.parametrize(
    "path",
    [
        "/instances/abc/frames/0/raw", "/instances/abc/frames/0/rendered", "/instances/abc/preview",
        "/instances/abc/image-uint8", "/instances/abc/numpy", "/instances/abc/matlab",
        "/instances/abc/tags", "/instances/abc/simplified-tags", "/instances/abc/header",
        "/instances/abc/content/0010-0010", "/instances/abc/pdf", "/series/abc/numpy",
        "/series/abc/ordered-slices", "/studies/abc/shared-tags", "/studies/abc/metadata/Foo",
        "/plugins/explorer.js", "/app/explorer.html", "/web-viewer/app/viewer.html",
    ],
)
def test_what_a_viewer_needs_stays_view(path: str) -> None:
    assert allowed(["view"], "GET", path)


@pytest.mark.parametrize(
    "path",
    ["/ui/app/index.html", "/stone-webviewer/index.html", "/ohif/viewer", "/osimis-viewer/app/index.html",
     "/volview/index.html", "/plugins", "/plugins/dicom-web"],
)
def test_viewers_not_installed_and_plugin_lists_are_not_view(path: str) -> None:
    assert not allowed(["view"], "GET", path)


def test_attachment_maintenance_is_admin() -> None:
    for op in ("compress", "uncompress", "verify-md5"):
        path = f"/instances/abc/attachments/dicom/{op}"
        assert not allowed(EVERYTHING_BUT_ADMIN, "POST", path)
        assert allowed(["admin"], "POST", path)


def test_every_route_lists_its_requirements() -> None:
    rows = routes.table()
    assert all({"methods", "path", "permission", "requires", "when", "what"} <= set(r) for r in rows)
    instance_modify = [r for r in rows if r["path"] == "/instances/*/modify"]
    assert instance_modify and instance_modify[0]["requires"] == "modify + download"


@pytest.mark.parametrize(
    "path",
    [
        "/instances/abc/unknown", "/studies/abc/labels", "/studies/abc/series/def",
        "/instances/abc/frames/0/rawxgz", "/instances/abc/frames/0/raw.gz/x", "/instances/abc/file.dcm",
        "/instances/abc/tags/x", "/studies/abc/archive.zip",
    ],
)
def test_below_a_resource_only_the_listed_views(path: str) -> None:
    """No catch-all: a route a newer Orthanc adds below a resource stays denied until reviewed."""
    assert not allowed(["view"], "GET", path)


@pytest.mark.parametrize(
    "path",
    ["/instances/abc/frames/0/raw.gz", "/instances/abc/frames/0", "/patients/abc/studies", "/studies/abc/patient",
     "/series/abc/instances-tags", "/instances/abc/content", "/instances/abc/content/0008-1140/0/0008-1155",
     "/patients/abc/protected", "/studies/abc/module-patient"],
)
def test_listed_views_below_a_resource(path: str) -> None:
    assert allowed(["view"], "GET", path)


# ------------------------------------------------------------------ every rule, every spelling


def _concrete(pattern: str) -> list[str]:
    """Concrete paths for a pattern: each alternative of each segment, ``*`` -> an id, ``**`` ->
    nothing and two more segments, a ``prefix*`` alternative -> ``prefix`` + a word."""
    paths = [""]
    for seg in pattern.strip("/").split("/"):
        if seg == "**":
            paths = [p for base in paths for p in (base, base + "/a1/b2")]
            continue
        options = ["x1"] if seg == "*" else [a[:-1] + "foo" if a.endswith("*") else a for a in seg.split("|")]
        paths = [base + "/" + o for base in paths for o in options]
    return paths


SATISFY = {routes.WADO_FILE: {"contentType": "application/dicom"}, routes.EXPANDED: {"expand": ""}}
CASES = [
    (i, method, path)
    for i, r in enumerate(routes.ROUTES)
    for method in sorted(r.methods)
    for path in _concrete(r.pattern)
]


@pytest.mark.parametrize(("index", "method", "path"), CASES)
def test_every_rule_and_its_spellings(index: int, method: str, path: str) -> None:
    rule = routes.ROUTES[index]
    query = SATISFY.get(rule.when) if rule.when else None
    found = routes.route_for(method, path, query)
    assert found is not None, (method, path)
    assert routes.ROUTES.index(found) <= index, "a later rule answered first"  # earlier rules may shadow
    # a trailing slash and a lower-case method change nothing
    assert routes.route_for(method, path + "/", query) is found
    assert routes.route_for(method.lower(), path, query) is found
    if method == "GET":
        assert routes.route_for("HEAD", path, query) is found
    # another case of the first segment, an encoded separator or dot segment, an empty segment: denied
    assert routes.route_for(method, path.upper(), query) is None or path.upper() == path
    head, _, rest = path[1:].partition("/")
    assert routes.route_for(method, "/" + head.capitalize() + ("/" + rest if rest else ""), query) is None \
        or head.capitalize() == head
    for odd in ("/%2e%2e/", "/../", "/./", "//", "%2F", "%2f", "%5c", "\\", "\x00"):
        assert routes.route_for(method, path + odd + "x", query) is None, odd
    # unknown methods never match
    assert routes.route_for("PATCH", path, query) is None
    assert routes.route_for("OPTIONS", path, query) is None


def test_every_rule_can_be_reached() -> None:
    """No rule is dead code hidden behind an earlier one for all of its paths."""
    reached = {routes.ROUTES.index(r) for _, m, p in CASES
               if (r := routes.route_for(m, p, SATISFY.get(routes.ROUTES[_].when) if routes.ROUTES[_].when else None))}
    assert reached == set(range(len(routes.ROUTES))), sorted(set(range(len(routes.ROUTES))) - reached)
