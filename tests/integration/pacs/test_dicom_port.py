"""The DICOM port admits only configured modalities (AE title + host); refusals are audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, StudyRootQueryRetrieveInformationModelFind

from pacs_devstack.orthanc import modality_tls
from pacs_devstack.pacs_double import dicom_instance

pytestmark = pytest.mark.integration


def _associate(orthanc: dict[str, Any], calling: str) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    # over TLS with a trusted modality certificate: what is refused here is the AE title, not the TLS step
    return ae.associate("127.0.0.1", orthanc["dicom_port"], ae_title=orthanc["aet"], tls_args=modality_tls())


def _find(assoc: Any) -> list[str]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found.append(str(identifier.StudyInstanceUID))
    return found


def _store(assoc: Any, uid: str) -> int:
    import io

    ds = dcmread(io.BytesIO(dicom_instance(patient_id="DIMSE-1", patient_name="Dimse^Test", study_uid=uid,
                                           series_uid=uid + ".1", sop_uid=uid + ".1.1")))
    return int(assoc.send_c_store(ds).Status)


def test_generated_dicom_settings(orthanc: dict[str, Any]) -> None:
    modalities = orthanc["modalities"]
    assert list(modalities) == ["dev-modality"]
    assert modalities["dev-modality"]["AET"] == "DEVMODALITY"
    assert modalities["dev-modality"]["Host"] == "127.0.0.1"


def test_unknown_ae_can_neither_find_nor_store(orthanc: dict[str, Any], pacs: Any,
                                               studies: dict[str, Any],
                                               audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    assoc = _associate(orthanc, "STRANGER")
    try:
        # refused: Orthanc answers A-ASSOCIATE-RJ, or aborts when it is slow to decide under load
        assert not assoc.is_established and (assoc.is_rejected or assoc.is_aborted)
    finally:
        if assoc.is_established:
            assoc.release()
    refused = audit_events("dicom.association_refused",
                           lambda e: any(o["id"] == "STRANGER" for o in e["objects"]))
    assert refused and refused[0]["actor"]["network_address"] == "127.0.0.1"
    # the right AE title calling the wrong AE title of the PACS is refused too
    ae = AE(ae_title="DEVMODALITY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    wrong = ae.associate("127.0.0.1", orthanc["dicom_port"], ae_title="NOTTHEPACS", tls_args=modality_tls())
    assert not wrong.is_established
    assert audit_events("dicom.association_refused",
                        lambda e: any(o["id"] == "NOTTHEPACS" for o in e["objects"]))


def test_configured_modality_can_find_and_store(orthanc: dict[str, Any], studies: dict[str, Any]) -> None:
    assoc = _associate(orthanc, "DEVMODALITY")
    assert assoc.is_established
    try:
        found = _find(assoc)
        assert studies["P-001"]["study_uid"] in found
        assert _store(assoc, "1.2.826.0.1.3680043.10.1137.77") == 0x0000
    finally:
        assoc.release()
