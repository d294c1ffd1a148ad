"""External viewers through the gateway's ``<prefix>/dicom-web/`` (issue 11, "Tests"): the PyPI
``dicomweb-client`` with a PACS token obtained as an OHIF-like viewer obtains it (Keycloak login with
password + TOTP on the public ``pacs-viewer`` client, then the bridge's token exchange), no cookie;
without a token 401/403; CORS answers only for the configured viewer origins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from gw_browser_helpers import IN_SCOPE, OUT_OF_SCOPE, Stack

from bridge.http import pinned_session
from pacs_devstack import demo_data
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp

pytestmark = pytest.mark.integration

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
#: the pacs-viewer client's redirect URI in the dev realm (never followed by the browserless login)
VIEWER_REDIRECT = "https://127.0.0.1:9443/viewer/oidc/callback"
VIEWER_ORIGIN = "https://viewer.hospital.test:8443"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def viewer_token(gw_stack: Stack, username: str) -> str:
    """A PACS token as an external viewer gets one: Keycloak (password + TOTP), then token exchange."""
    kc = gw_stack.settings.keycloak
    realm = kc.realm
    user = demo_data.user(username)
    login = BrowserlessLogin(str(kc.url), realm, "pacs-viewer", VIEWER_REDIRECT, ca_file=gw_stack.info["ca"]["file"])
    result = login.login(username, str(user["password"]), otp=fresh_totp(user["totp_secret"], f"{realm}/{username}"))
    http = pinned_session(gw_stack.info["ca"]["file"])
    r = http.post(gw_stack.info["bridge"]["url"] + "/token", timeout=30, data={
        "grant_type": EXCHANGE, "client_id": "pacs-viewer", "subject_token": result.access_token,
        "subject_token_type": ACCESS_TOKEN})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return str(r.json()["access_token"])


@pytest.fixture(scope="module")
def tokens(gw_stack: Stack) -> dict[str, str]:
    return {u: viewer_token(gw_stack, u) for u in ("rad.alice", "card.liam")}


@pytest.fixture(scope="module")
def client(gw_stack: Stack) -> Callable[[str | None], DICOMwebClient]:
    """``client(token)``: dicomweb-client on the gateway's DICOMweb, bearer header only (no cookie)."""

    def make(token: str | None) -> DICOMwebClient:
        session = pinned_session(gw_stack.info["ca"]["file"])  # a CA bundle in the environment would win
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return DICOMwebClient(url=gw_stack.gateway + "/dicom-web", session=session, headers=headers)

    return make


def status_of(call: Callable[[], Any]) -> int:
    with pytest.raises(requests.HTTPError) as caught:
        call()
    return int(caught.value.response.status_code)


def values(results: list[dict[str, Any]], tag: str) -> set[str]:
    return {r[tag]["Value"][0] for r in results if r.get(tag, {}).get("Value")}


def test_radiologist_searches_and_retrieves_through_the_gateway(
    client: Callable[[str | None], DICOMwebClient], tokens: dict[str, str],
    department_studies: dict[str, dict[str, str]], gw_stack: Stack,
) -> None:
    c = client(tokens["rad.alice"])
    # no wildcard filter: dicomweb-client sends ``*`` as ``%2A``, which Orthanc 1.10.1's DICOMweb
    # matches literally (directly as through the gateway); the whole list is small in the dev stack
    found = c.search_for_studies()
    assert {s["study_uid"] for s in department_studies.values()} <= values(found, STUDY_UID)
    one = department_studies["Oncology"]
    assert values(c.search_for_studies(search_filters={"PatientID": one["patient_id"]}), STUDY_UID) == {
        one["study_uid"]}
    # the answer's URLs point at the gateway, not at Orthanc's internal address
    assert all(gw_stack.gateway in str(s.get("00081190", {}).get("Value", [""])[0]) for s in found), found
    s = department_studies["Radiology"]
    assert values(c.search_for_series(s["study_uid"]), SERIES_UID) == {s["series_uid"]}
    assert values(c.search_for_instances(s["study_uid"]), SOP_UID) == {s["sop_uid"]}
    assert [d.SOPInstanceUID for d in c.retrieve_study(s["study_uid"])] == [s["sop_uid"]]
    instance = c.retrieve_instance(s["study_uid"], s["series_uid"], s["sop_uid"])
    assert instance.StudyInstanceUID == s["study_uid"] and instance.PatientID == s["patient_id"]
    assert values(c.retrieve_study_metadata(s["study_uid"]), SOP_UID) == {s["sop_uid"]}


def test_cardiology_token_searches_and_retrieves_cardiology_only(
    client: Callable[[str | None], DICOMwebClient], tokens: dict[str, str],
    department_studies: dict[str, dict[str, str]],
) -> None:
    c = client(tokens["card.liam"])
    own = department_studies[IN_SCOPE]
    mine = {s["study_uid"] for s in department_studies.values()}
    assert values(c.search_for_studies(), STUDY_UID) & mine == {own["study_uid"]}
    for d in OUT_OF_SCOPE:
        other = department_studies[d]
        assert not c.search_for_studies(search_filters={"PatientID": other["patient_id"]}), d
    assert [d.SOPInstanceUID for d in c.retrieve_study(own["study_uid"])] == [own["sop_uid"]]
    for d in OUT_OF_SCOPE:
        other = department_studies[d]
        assert status_of(lambda o=other: c.retrieve_study(o["study_uid"])) == 403
        assert status_of(lambda o=other: c.retrieve_study_metadata(o["study_uid"])) == 403
        try:  # a search inside an out-of-scope study: refused or empty, never its series
            assert not c.search_for_series(other["study_uid"])
        except requests.HTTPError as exc:
            assert exc.response.status_code == 403


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer not-a-token", "Basic cmFkLmFsaWNlOng="])
def test_no_or_a_bad_token_is_refused(gw_stack: Stack, department_studies: dict[str, dict[str, str]],
                                      auth: str | None) -> None:
    http = pinned_session(gw_stack.info["ca"]["file"])
    s = department_studies["Radiology"]
    headers = {"Accept": "application/dicom+json"} | ({"Authorization": auth} if auth else {})
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{s['study_uid']}/metadata",
                 f"/dicom-web/studies/{s['study_uid']}"):
        r = http.get(gw_stack.gateway + path, headers=headers, timeout=30, allow_redirects=False)
        assert r.status_code in (401, 403), (auth, path, r.status_code)
        assert s["study_uid"] not in r.text


def test_no_token_through_dicomweb_client(client: Callable[[str | None], DICOMwebClient],
                                          department_studies: dict[str, dict[str, str]]) -> None:
    c = client(None)
    s = department_studies["Radiology"]
    for call in (c.search_for_studies, lambda: c.retrieve_study(s["study_uid"]),
                 lambda: c.retrieve_instance(s["study_uid"], s["series_uid"], s["sop_uid"])):
        assert status_of(call) in (401, 403)


def test_cors_answers_only_the_configured_viewer_origins(
    private_gateway: Callable[..., str], gw_stack: Stack, tokens: dict[str, str],
) -> None:
    gateway = private_gateway(viewer_origins=[VIEWER_ORIGIN])
    http = pinned_session(gw_stack.info["ca"]["file"])

    def preflight(origin: str, path: str = "/dicom-web/studies") -> requests.Response:
        return http.options(gateway + path, timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})

    ok = preflight(VIEWER_ORIGIN)
    assert ok.status_code in (200, 204) and ok.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "authorization" in ok.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in ok.headers
    for origin in ("https://evil.example", VIEWER_ORIGIN + "/", VIEWER_ORIGIN.upper(),
                   VIEWER_ORIGIN.replace(":8443", ":8444"), VIEWER_ORIGIN.replace("https:", "http:"), "null",
                   VIEWER_ORIGIN + ".evil.example", f"{VIEWER_ORIGIN}, https://evil.example"):
        r = preflight(origin)
        assert "Access-Control-Allow-Origin" not in r.headers, origin
        assert r.status_code >= 400, (origin, r.status_code)
    # a preflight for a path that is not DICOMweb, even from the viewer's origin
    for path in ("/studies", "/tools/find", "/dicom-web", "/app/explorer.html"):
        r = preflight(VIEWER_ORIGIN, path)
        assert "Access-Control-Allow-Origin" not in r.headers, path

    # the real request: CORS for the viewer's origin, never for another, never with credentials
    bearer = {"Authorization": f"Bearer {tokens['rad.alice']}", "Accept": "application/dicom+json"}
    r = http.get(gateway + "/dicom-web/studies?limit=1", timeout=30, headers=bearer | {"Origin": VIEWER_ORIGIN})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "Access-Control-Allow-Credentials" not in r.headers
    r = http.get(gateway + "/dicom-web/studies?limit=1", timeout=30,
                 headers=bearer | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    # the stack's gateway has no viewer origin configured: no CORS for anyone
    r = http.options(gw_stack.gateway + "/dicom-web/studies", timeout=30, headers={
        "Origin": VIEWER_ORIGIN, "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in r.headers
