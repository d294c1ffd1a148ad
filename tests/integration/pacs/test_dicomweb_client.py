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
from tests.integration.pacs.scoped_tokens import scoped_claims, scoped_token

pytestmark = pytest.mark.integration

#: where external viewers reach DICOMweb (see the module docstring)
DICOMWEB_BASES = ("orthanc",)
STUDY_UID = "0020000D"
PATIENT_ID = "00100020"
PIXELS = bytes(range(128))  # what pacs_double.dicom_instance stores


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
        session = requests.Session()
        session.verify = stack["ca"]["file"]  # the gateway speaks TLS with the dev CA; Orthanc plain HTTP
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
    one = c.search_for_studies(search_filters={"PatientID": "P-001"})
    assert values(one, STUDY_UID) == {studies["P-001"]["study_uid"]}
    assert values(one, PATIENT_ID) == {"P-001"}


def test_search_series_and_instances(client: Any, studies: dict[str, dict[str, str]], unrestricted: str) -> None:
    c = client(unrestricted)
    uid = studies["P-002"]["study_uid"]
    assert values(c.search_for_series(uid), "0020000E") == {uid + ".1"}
    assert values(c.search_for_instances(uid), "00080018") == {uid + ".1.1"}


def test_retrieve_study_instance_metadata_and_frames(client: Any, studies: dict[str, dict[str, str]],
                                                     unrestricted: str) -> None:
    c = client(unrestricted)
    uid = studies["P-003"]["study_uid"]
    datasets = c.retrieve_study(uid)
    assert [d.SOPInstanceUID for d in datasets] == [uid + ".1.1"]
    assert datasets[0].PatientID == "P-003" and datasets[0].PixelData == PIXELS
    instance = c.retrieve_instance(uid, uid + ".1", uid + ".1.1")
    assert instance.StudyInstanceUID == uid and instance.PixelData == PIXELS
    metadata = c.retrieve_study_metadata(uid)
    assert values(metadata, "00080018") == {uid + ".1.1"}
    # the frame in its stored transfer syntax (Orthanc's DICOMweb 1.7 answers 400 to the client's default
    # ``transfer-syntax=*``)
    frames = c.retrieve_instance_frames(uid, uid + ".1", uid + ".1.1", frame_numbers=[1],
                                        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
    assert frames == [PIXELS]


def test_no_token_is_refused(client: Any, studies: dict[str, dict[str, str]]) -> None:
    c = client(None)
    uid = studies["P-001"]["study_uid"]
    for call in (c.search_for_studies, lambda: c.retrieve_study(uid), lambda: c.retrieve_study_metadata(uid),
                 lambda: c.retrieve_instance(uid, uid + ".1", uid + ".1.1")):
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
    uid = studies["P-001"]["study_uid"]
    assert status_of(c.search_for_studies) in (401, 403)
    assert status_of(lambda: c.retrieve_study(uid)) in (401, 403)


def test_view_alone_searches_but_does_not_retrieve_files(client: Any, pacs: Any,
                                                          studies: dict[str, dict[str, str]]) -> None:
    """WADO-RS study/instance retrieval hands out whole DICOM files: download, not view."""
    c = client(scoped_token(pacs.bridge, [P.VIEW]))
    uid = studies["P-001"]["study_uid"]
    assert uid in values(c.search_for_studies(), STUDY_UID)
    assert values(c.retrieve_study_metadata(uid), "00080018") == {uid + ".1.1"}
    assert status_of(lambda: c.retrieve_study(uid)) == 403
    assert status_of(lambda: c.retrieve_instance(uid, uid + ".1", uid + ".1.1")) == 403


def test_scoped_token_retrieves_in_scope_only(client: Any, pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    c = client(scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD], departments=["Radiology"]))
    own, other = studies["P-001"]["study_uid"], studies["P-002"]["study_uid"]
    assert [d.PatientID for d in c.retrieve_study(own)] == ["P-001"]
    assert status_of(lambda: c.retrieve_study(other)) == 403
    assert status_of(lambda: c.retrieve_study_metadata(other)) == 403
    assert status_of(lambda: c.retrieve_instance(other, other + ".1", other + ".1.1")) == 403
