"""The two route holes of the hardening issue, against the dev stack's real Orthanc 1.10.1 with the
DICOMweb 1.7 plugin and the bridge plugin.

1. A technologist (send) cannot define, change or delete network peers, nor use the DICOMweb
   HTTP proxies, nor query/retrieve from remote peers; an admin can define peers.
2. A view-only user cannot get whole DICOM files: WADO-RS retrieve, WADO-URI application/dicom
   (any spelling), instance-level modify/anonymize; metadata, rendered images and frames stay open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.core.permissions import Permission as P
from bridge.core.permissions import expand
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from pacs_devstack.orthanc import connection

pytestmark = pytest.mark.integration

#: a modality / peer / DICOMweb server that points at a closed port of this host (nothing leaves it)
DEAD_MODALITY = {"AET": "EVIL", "Host": "127.0.0.1", "Port": 9, "AllowFind": True, "AllowMove": True}
DEAD_PEER = {"Url": "http://127.0.0.1:9/"}
DEAD_SERVER = {"Url": "http://127.0.0.1:9/dicom-web/"}
DICM = b"DICM"
QR = P.QUERY_RETRIEVE.value


def _role(pacs: Any, role: str) -> str:
    return pacs.bridge.token(expand(set(DEFAULT_ROLE_PERMISSIONS[role])), roles=[role])


def _raw(pacs: Any, method: str, path: str, token: str) -> tuple[int, bytes]:
    """Send ``path`` verbatim (requests would re-encode or normalise it): (status, body)."""
    parts = urlsplit(pacs.url)
    conn = connection(parts.port, timeout=15)  # HTTPS, verified against the stack CA
    conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
    answer = conn.getresponse()
    status, body = answer.status, answer.read()
    conn.close()
    return status, body


@pytest.fixture(scope="module")
def admin(pacs: Any) -> str:
    return pacs.bridge.token([P.ADMIN], roles=["pacs-admin"])


@pytest.fixture
def peers(pacs: Any, admin: str) -> Any:
    """An admin defines one dead modality, peer and DICOMweb server; removed afterwards."""
    made = [("/modalities/dead", DEAD_MODALITY), ("/peers/dead", DEAD_PEER), ("/dicom-web/servers/dead", DEAD_SERVER)]
    for path, body in made:
        assert pacs.request("PUT", path, admin, json=body).status_code == 200, path
    yield
    for path, _ in made:
        pacs.request("DELETE", path, admin)


# ------------------------------------------------------------------ 1. peers


def test_technologist_cannot_define_or_remove_peers(pacs: Any, admin: str, peers: None) -> None:
    tech = _role(pacs, "technologist")
    rad = _role(pacs, "radiologist")  # send + query/retrieve: still no peer definitions
    for token in (tech, rad):
        for path, body in (("/modalities/evil", DEAD_MODALITY), ("/peers/evil", DEAD_PEER),
                           ("/dicom-web/servers/evil", DEAD_SERVER), ("/modalities/dead", DEAD_MODALITY),
                           ("/dicom-web/servers/dead", DEAD_SERVER)):
            assert pacs.request("PUT", path, token, json=body).status_code == 403, path
            assert pacs.request("PUT", path + "/", token, json=body).status_code == 403, path
        for path in ("/modalities/dead", "/peers/dead", "/dicom-web/servers/dead"):
            assert pacs.request("DELETE", path, token).status_code == 403, path
        for path in ("/modalities/dead/configuration", "/peers/dead/configuration"):
            assert pacs.get(path, token).status_code == 403, path
        assert pacs.request("POST", "/tools/dicom-echo", token, json=DEAD_MODALITY).status_code == 403
    # nothing was created, the admin's definitions are intact
    for path in ("/modalities", "/peers", "/dicom-web/servers"):
        names = pacs.get(path, admin).json()
        assert "dead" in names and "evil" not in names, path
    assert pacs.get("/modalities/dead/configuration", admin).json()["Host"] == "127.0.0.1"


def test_peer_lists_hide_hosts_from_send(pacs: Any, admin: str, peers: None) -> None:
    tech = _role(pacs, "technologist")
    for path in ("/modalities", "/peers", "/dicom-web/servers"):
        assert "dead" in pacs.get(path, tech).json(), path
        assert pacs.get(path + "?expand", tech).status_code == 403, path
        # Orthanc does not decode query keys: "%65xpand" is not "expand" to it either
        status, body = _raw(pacs, "GET", path + "?x=1&%65xpand", tech)
        assert status == 403 or (status == 200 and b"127.0.0.1" not in body), path
        assert pacs.get(path + "?expand", admin).status_code == 200, path
    assert "Host" in str(pacs.get("/modalities?expand", admin).json())


def test_dicomweb_proxies_are_denied_to_everybody_but_nobody_else(pacs: Any, peers: None) -> None:
    everything = pacs.bridge.token(list(P))
    body = {"Uri": "/studies"}
    for method, path in (("POST", "/dicom-web/servers/dead/get"), ("POST", "/dicom-web/servers/dead/post"),
                         ("GET", "/dicom-web/servers/dead/wado?Uri=/studies"),
                         ("POST", "/dicom-web/servers/dead/delete")):
        assert pacs.request(method, path, everything, json=body).status_code == 403, path


def test_send_pushes_but_does_not_query_or_retrieve(pacs: Any, peers: None, studies: dict[str, dict[str, str]],
                                                    audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    tech = _role(pacs, "technologist")
    qr = pacs.bridge.token([P.QUERY_RETRIEVE, P.VIEW], subject="u-qr", username="qr.user")
    find = {"Level": "Study", "Query": {"PatientID": "*"}}
    for path in ("/modalities/dead/query", "/modalities/dead/find-study", "/modalities/dead/move"):
        assert pacs.request("POST", path, tech, json=find).status_code == 403, path
        # the filter lets the Q/R permission through; Orthanc then fails to reach the closed port
        assert pacs.request("POST", path, qr, json=find).status_code not in (200, 403), path
    assert pacs.get("/queries", tech).status_code == 403
    assert pacs.get("/queries", qr).status_code == 200
    assert pacs.request("POST", "/dicom-web/servers/dead/qido", tech, json={"Uri": "/studies"}).status_code == 403
    # pushes to the configured peers pass the filter (and fail at the closed port)
    instance = studies["P-001"]["instance"]
    assert pacs.request("POST", "/modalities/dead/store", tech, json=[instance]).status_code not in (200, 403)
    assert pacs.request("POST", "/modalities/dead/echo", tech, json={}).status_code != 403
    assert pacs.request("POST", "/modalities/dead/store", qr, json=[instance]).status_code == 403
    # a query/retrieve that passed the filter is audited
    queried = audit_events("study.queried", lambda e: (e["actor"] or {}).get("username") == "qr.user"
                           and e["details"]["permission"] == QR)
    assert queried and any("/modalities/dead/query" in e["details"]["paths"] for e in queried)


# ------------------------------------------------------------------ 2. whole files


@pytest.fixture(scope="module")
def viewer(pacs: Any) -> str:
    return _role(pacs, "referring-physician")


def _uids(pacs: Any, studies: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    tags = pacs.get(f"/instances/{studies['P-001']['instance']}/simplified-tags",
                    pacs.bridge.token([P.VIEW])).json()
    return tags["StudyInstanceUID"], tags["SeriesInstanceUID"], tags["SOPInstanceUID"]


def test_wado_rs_retrieve_needs_download(pacs: Any, viewer: str, studies: dict[str, dict[str, str]]) -> None:
    study, series, sop = _uids(pacs, studies)
    base = f"/dicom-web/studies/{study}"
    retrieves = (base, f"{base}/series/{series}", f"{base}/series/{series}/instances/{sop}")
    downloader = pacs.bridge.token([P.DOWNLOAD])
    for path in retrieves:
        assert pacs.get(path, viewer).status_code == 403, path
        assert pacs.get(path + "/", viewer).status_code == 403, path
        assert pacs.get(path, viewer, headers={"Accept": "multipart/related; type=application/dicom"}
                        ).status_code == 403, path
        assert pacs.request("HEAD", path, viewer).status_code != 200, path
        answer = pacs.get(path, downloader)
        assert answer.status_code == 200 and DICM in answer.content, path
    for path in (f"{base}/metadata", f"{base}/series/{series}/metadata",
                 f"{base}/series/{series}/instances/{sop}/metadata", f"{base}/rendered",
                 f"{base}/series/{series}/instances/{sop}/rendered",
                 f"{base}/series/{series}/instances/{sop}/frames/1",
                 f"{base}/series/{series}/instances/{sop}/frames/1/rendered",
                 f"{base}/series/{series}/instances/{sop}/bulk/7fe00010",
                 "/dicom-web/studies", f"{base}/series"):
        answer = pacs.get(path, viewer)
        assert answer.status_code == 200, path
        assert DICM not in answer.content[:200], path


def test_wado_uri_dicom_needs_download(pacs: Any, viewer: str, studies: dict[str, dict[str, str]]) -> None:
    study, series, sop = _uids(pacs, studies)
    wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    downloader = pacs.bridge.token([P.DOWNLOAD])
    refused = ("&contentType=application/dicom", "&contentType=application%2Fdicom",
               "&contentType=image/jpeg&contentType=application/dicom",
               "&ContentType=application/dicom", "&contentType=application/DICOM")
    for extra in refused:
        assert _raw(pacs, "GET", wado + extra, viewer)[0] == 403, extra
    # Orthanc does not decode query keys, for the plugin "content%54ype" is not contentType either
    status, body = _raw(pacs, "GET", wado + "&content%54ype=application/dicom", viewer)
    assert status == 403 or (status == 200 and DICM not in body[:200])
    answer = pacs.get(wado + "&contentType=application/dicom", downloader)
    assert answer.status_code == 200 and answer.content[128:132] == DICM
    for extra in ("", "&contentType=image/jpeg", "&contentType=image/jpg", "&contentType=image/png",
                  # the plugin takes the last value: a rendered image, never the file
                  "&contentType=application/dicom&contentType=image/png"):
        answer = pacs.get(wado + extra, viewer)
        assert answer.status_code == 200, extra
        # (the DICOMweb plugin 1.7 labels every preview image/png, JPEG included)
        assert answer.headers["Content-Type"].startswith("image/") and DICM not in answer.content[:200], extra


@pytest.mark.parametrize("action", ["modify", "anonymize"])
def test_instance_level_modify_needs_download(pacs: Any, studies: dict[str, dict[str, str]], action: str) -> None:
    instance = studies["P-001"]["instance"]
    body = {"Replace": {"StudyDescription": "changed"}, "Force": True} if action == "modify" else {}
    without = pacs.bridge.token([P(action), P.VIEW])
    with_download = pacs.bridge.token([P(action), P.DOWNLOAD])
    assert pacs.request("POST", f"/instances/{instance}/{action}", without, json=body).status_code == 403
    assert pacs.request("POST", f"/instances/{instance}/{action}/", without, json=body).status_code == 403
    answer = pacs.request("POST", f"/instances/{instance}/{action}", with_download, json=body)
    assert answer.status_code == 200 and answer.content[128:132] == DICM
    # the technologist's everyday modify (study level, stored in the PACS) still works
    tech = _role(pacs, "technologist")
    assert pacs.request("POST", f"/instances/{instance}/modify", tech, json=body).status_code == 403
    study = studies["P-001"]["study"]
    if action == "modify":
        assert pacs.request("POST", f"/studies/{study}/modify", tech, json=body).status_code == 200


def test_other_whole_file_routes_need_download(pacs: Any, viewer: str, studies: dict[str, dict[str, str]]) -> None:
    s = studies["P-001"]
    for method, path in (("GET", f"/instances/{s['instance']}/file"),
                         ("GET", f"/instances/{s['instance']}/attachments/dicom/data"),
                         ("GET", f"/instances/{s['instance']}/attachments/dicom/compressed-data"),
                         ("GET", f"/studies/{s['study']}/archive"), ("GET", f"/series/{s['series']}/media"),
                         ("POST", "/tools/create-archive")):
        assert pacs.request(method, path, viewer, json={"Resources": [s["study"]]}).status_code == 403, path
    for path in (f"/instances/{s['instance']}/preview", f"/instances/{s['instance']}/frames/0/raw",
                 f"/instances/{s['instance']}/tags", f"/instances/{s['instance']}/content/0010-0010",
                 "/app/explorer.html", "/plugins/explorer.js"):
        assert pacs.get(path, viewer).status_code == 200, path
