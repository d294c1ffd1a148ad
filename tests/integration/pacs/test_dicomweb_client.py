"""External viewers over DICOMweb (issue 11, item 5): the ``dicomweb-client`` library from PyPI, as
an OHIF-like viewer with its own OAuth login would use it, with a PACS bearer token and no cookie.

The base URL is one fixture, ``dicomweb_url``, parametrised over ``DICOMWEB_BASES``: today Orthanc's own
``/dicom-web``.  The browser session gateway serves the same API at ``https://<bridge>/pacs/dicom-web``
and passes the bearer token through; add ``"gateway"`` to ``DICOMWEB_BASES`` to run every test there too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from bridge.core.permissions import Permission as P
from bridge.http import pinned_session
from tests.integration.pacs.scoped_tokens import scoped_claims, scoped_token
from tests.integration.pacs.viewer_studies import IN, OUT, PIXELS, store_studies

pytestmark = pytest.mark.integration

#: where external viewers reach DICOMweb (see the module docstring)
DICOMWEB_BASES = ("orthanc",)
STUDY_UID = "0020000D"
PATIENT_ID = "00100020"


@pytest.fixture(scope="module")
def studies(pacs: Any) -> dict[str, dict[str, str]]:
    """IN (Radiology) and OUT (Cardiology): this module's own studies."""
    return store_studies(pacs, "dicomweb-client")


@pytest.fixture(params=DICOMWEB_BASES)
def dicomweb_url(request: pytest.FixtureRequest, pacs: Any, stack: dict[str, Any]) -> str:
    if request.param == "orthanc":
        return pacs.url + "/dicom-web"
    if request.param == "gateway":  # after the merge: the gateway's prefix in front of the same Orthanc
        return str(stack["bridge"]["url"]).rstrip("/") + "/pacs/dicom-web"
    raise AssertionError(f"unknown DICOMweb base {request.param!r}")


@pytest.fixture
def client(dicomweb_url: str, stack: dict[str, Any]) -> Callable[[str | None], DICOMwebClient]:
    """``client(token)``: a dicomweb-client with ``Authorization: Bearer <token>`` (no header for None)."""

    def make(token: str | None) -> DICOMwebClient:
        # the gateway and Orthanc both serve HTTPS with dev CA certificates; pinned: a CA bundle in the
        # environment (REQUESTS_CA_BUNDLE) would otherwise replace session.verify
        session = pinned_session(stack["ca"]["file"])
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return DICOMwebClient(url=dicomweb_url, session=session, headers=headers)

    return make


@pytest.fixture(scope="module")
def unrestricted(pacs: Any) -> str:
    return scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD])


def status_of(call: Callable[[], Any]) -> int:
    with pytest.raises(requests.HTTPError) as caught:
        call()
    return int(caught.value.response.status_code)


def values(results: list[dict[str, Any]], tag: str) -> set[str]:
    return {r[tag]["Value"][0] for r in results if r.get(tag, {}).get("Value")}


def test_search_studies_with_an_unrestricted_token(client: Any, studies: dict[str, dict[str, str]],
                                                   unrestricted: str) -> None:
    c = client(unrestricted)
    found = values(c.search_for_studies(), STUDY_UID)
    assert {s["study_uid"] for s in studies.values()} <= found
    one = c.search_for_studies(search_filters={"PatientID": studies[IN]["patient_id"]})
    assert values(one, STUDY_UID) == {studies[IN]["study_uid"]}
    assert values(one, PATIENT_ID) == {studies[IN]["patient_id"]}


def test_search_series_and_instances(client: Any, studies: dict[str, dict[str, str]], unrestricted: str) -> None:
    c = client(unrestricted)
    s = studies[OUT]
    assert values(c.search_for_series(s["study_uid"]), "0020000E") == {s["series_uid"]}
    assert values(c.search_for_instances(s["study_uid"]), "00080018") == {s["sop_uid"]}


def test_retrieve_study_instance_metadata_and_frames(client: Any, studies: dict[str, dict[str, str]],
                                                     unrestricted: str) -> None:
    c = client(unrestricted)
    s = studies[OUT]
    datasets = c.retrieve_study(s["study_uid"])
    assert [d.SOPInstanceUID for d in datasets] == [s["sop_uid"]]
    assert datasets[0].PatientID == s["patient_id"] and datasets[0].PixelData == PIXELS
    instance = c.retrieve_instance(s["study_uid"], s["series_uid"], s["sop_uid"])
    assert instance.StudyInstanceUID == s["study_uid"] and instance.PixelData == PIXELS
    assert values(c.retrieve_study_metadata(s["study_uid"]), "00080018") == {s["sop_uid"]}
    # the frame in its stored transfer syntax (Orthanc's DICOMweb 1.7 answers 400 to the client's default
    # ``transfer-syntax=*``)
    frames = c.retrieve_instance_frames(s["study_uid"], s["series_uid"], s["sop_uid"], frame_numbers=[1],
                                        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
    assert frames == [PIXELS]


def test_no_token_is_refused(client: Any, studies: dict[str, dict[str, str]]) -> None:
    c = client(None)
    s = studies[IN]
    for call in (c.search_for_studies, lambda: c.retrieve_study(s["study_uid"]),
                 lambda: c.retrieve_study_metadata(s["study_uid"]),
                 lambda: c.retrieve_instance(s["study_uid"], s["series_uid"], s["sop_uid"])):
        assert status_of(call) in (401, 403)


@pytest.mark.parametrize("spoil", ["expired", "audience", "issuer", "signature", "no-mfa"])
def test_a_bad_token_is_refused(client: Any, pacs: Any, studies: dict[str, dict[str, str]], spoil: str) -> None:
    claims = scoped_claims(pacs.bridge, [P.VIEW, P.DOWNLOAD])
    now = int(time.time())
    if spoil == "expired":
        claims.update(iat=now - 600, nbf=now - 600, exp=now - 120)
    elif spoil == "audience":
        claims["aud"] = "another-pacs"
    elif spoil == "issuer":
        claims["iss"] = "https://elsewhere.example"
    elif spoil == "no-mfa":
        claims = scoped_claims(pacs.bridge, [P.VIEW, P.DOWNLOAD], amr=("pwd",))
    token = pacs.bridge.ring.sign(claims)
    if spoil == "signature":
        head, body, sig = token.split(".")
        token = ".".join((head, body, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")))
    c = client(token)
    assert status_of(c.search_for_studies) in (401, 403)
    assert status_of(lambda: c.retrieve_study(studies[IN]["study_uid"])) in (401, 403)


def test_view_alone_searches_but_does_not_retrieve_files(client: Any, pacs: Any,
                                                          studies: dict[str, dict[str, str]]) -> None:
    """WADO-RS study/instance retrieval hands out whole DICOM files: download, not view."""
    c = client(scoped_token(pacs.bridge, [P.VIEW]))
    s = studies[IN]
    assert s["study_uid"] in values(c.search_for_studies(), STUDY_UID)
    assert values(c.retrieve_study_metadata(s["study_uid"]), "00080018") == {s["sop_uid"]}
    assert status_of(lambda: c.retrieve_study(s["study_uid"])) == 403
    assert status_of(lambda: c.retrieve_instance(s["study_uid"], s["series_uid"], s["sop_uid"])) == 403


def test_scoped_token_retrieves_in_scope_only(client: Any, pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    c = client(scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD], departments=["Radiology"]))
    own, other = studies[IN], studies[OUT]
    assert [d.PatientID for d in c.retrieve_study(own["study_uid"])] == [own["patient_id"]]
    assert status_of(lambda: c.retrieve_study(other["study_uid"])) == 403
    assert status_of(lambda: c.retrieve_study_metadata(other["study_uid"])) == 403
    assert status_of(lambda: c.retrieve_instance(other["study_uid"], other["series_uid"], other["sop_uid"])) == 403


def test_retrieve_urls_name_https(pacs: Any, studies: dict[str, Any]) -> None:
    """Orthanc serves HTTPS only: the URLs its DICOMweb answers carry must say so (a client following
    an http:// RetrieveURL would get no answer)."""
    found = pacs.get("/dicom-web/studies", pacs.bridge.token([P.VIEW])).json()
    urls = [s["00081190"]["Value"][0] for s in found if "00081190" in s]
    assert urls and all(u.startswith("https://") and "/dicom-web/studies/" in u for u in urls), urls[:3]
