"""Orthanc's DICOM port speaks TLS only and admits only client certificates issued by the
modalities' CA (issue 12 item 2, docs/encryption.md): with a trusted certificate C-ECHO and C-STORE
work; without a certificate, with a certificate of the stack CA (trusted everywhere else), with one
of a foreign CA bearing the modalities CA's name, or in plain DICOM, no association.  An accepted
C-STORE is in the audit trail with the calling AE title and the peer address, so is an incoming
C-FIND (the tags it asks, never their values); a refused TLS handshake is audited too."""

from __future__ import annotations

import io
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from pacs_devstack import tls
from pacs_devstack.orthanc import modality_tls
from pacs_devstack.pacs_double import dicom_instance

pytestmark = pytest.mark.integration

UID_ROOT = "1.2.826.0.1.3680043.10.1137.12"


def _context(cert: Path | None = None, key: Path | None = None) -> tuple[ssl.SSLContext, str]:
    """A modality's TLS side: Orthanc verified against the stack CA, ``cert`` presented if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ensure_ca()))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context, "localhost"


def _associate(orthanc: dict[str, Any], tls_args: tuple[ssl.SSLContext, str] | None,
               calling: str = "DEVMODALITY") -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 15
    ae.add_requested_context(Verification)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae.associate("127.0.0.1", orthanc["dicom_port"], ae_title=orthanc["aet"], tls_args=tls_args)


def _refused(assoc: Any) -> bool:
    try:
        return not assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()


def _instance(study_uid: str) -> Any:
    return dcmread(io.BytesIO(dicom_instance(patient_id="TLS-" + study_uid[-6:], patient_name="Tls^Modality",
                                             study_uid=study_uid, series_uid=study_uid + ".1",
                                             sop_uid=study_uid + ".1.1")))


def test_trusted_modality_certificate_echoes_and_stores(orthanc: dict[str, Any], pacs: Any) -> None:
    assert orthanc["dicom_tls"] is True
    assoc = _associate(orthanc, modality_tls())
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert int(assoc.send_c_store(_instance(f"{UID_ROOT}.{uuid.uuid4().int % 10**9}")).Status) == 0x0000
    finally:
        assoc.release()


def test_no_client_certificate_is_refused(orthanc: dict[str, Any]) -> None:
    assert _refused(_associate(orthanc, _context()))


def test_a_certificate_of_the_stack_ca_is_refused(orthanc: dict[str, Any]) -> None:
    """The stack CA signs every server (the bridge, Keycloak ...): none of them is a modality."""
    bridge = tls.issue("bridge")
    assert _refused(_associate(orthanc, _context(bridge.cert, bridge.key)))


def test_a_certificate_of_a_foreign_ca_is_refused(orthanc: dict[str, Any], tmp_path: Path) -> None:
    """Same CA name as the modalities CA, another key."""
    foreign = tls.issue_foreign_client(tmp_path, "devmodality.modality.test", ca=tls.MODALITY_CA)
    assert _refused(_associate(orthanc, _context(foreign.cert, foreign.key)))


def test_plain_dicom_is_refused(orthanc: dict[str, Any]) -> None:
    assert _refused(_associate(orthanc, None))


def test_a_modality_refuses_an_orthanc_it_cannot_verify(orthanc: dict[str, Any], tmp_path: Path) -> None:
    """The modality's side of the handshake checks Orthanc's certificate (no blind trust)."""
    foreign = tls.issue_foreign_client(tmp_path, "x.test")
    pair = tls.issue_modality("DEVMODALITY")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(foreign.ca))
    context.load_cert_chain(str(pair.cert), str(pair.key))
    assert _refused(_associate(orthanc, (context, "localhost")))


def test_an_accepted_cstore_is_audited_with_the_calling_ae_and_address(
        orthanc: dict[str, Any], pacs: Any, audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    study_uid = f"{UID_ROOT}.{uuid.uuid4().int % 10**9}"
    assoc = _associate(orthanc, modality_tls())
    assert assoc.is_established
    try:
        for n in range(3):  # one association, three instances of one study: one event counting them
            ds = _instance(study_uid)
            ds.SOPInstanceUID = f"{study_uid}.1.{n + 1}"
            assert int(assoc.send_c_store(ds).Status) == 0x0000
    finally:
        assoc.release()
    deadline = time.monotonic() + 20
    while True:  # the three may straddle two flushes (one event each)
        found = audit_events("study.uploaded", lambda e: any(o["id"] == study_uid for o in e["objects"]),
                             timeout=20)
        if sum(e["details"]["instances"] for e in found) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert found, "the C-STORE left no study.uploaded event"
    event = found[0]
    assert event["actor"]["network_address"] == "127.0.0.1"
    assert event["actor"]["username"] == "DEVMODALITY"
    assert any(o["kind"] == "node" and o["id"] == "DEVMODALITY" for o in event["objects"])
    details = event["details"]
    assert details["operation"] == "C-STORE" and details["called_aet"] == orthanc["aet"]
    assert sum(e["details"]["instances"] for e in found) == 3


def test_a_refused_tls_handshake_is_audited(orthanc: dict[str, Any], pacs: Any,
                                            audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    assert _refused(_associate(orthanc, _context()))
    refused = audit_events("dicom.association_refused", lambda e: "TLS" in e["details"].get("reason", ""),
                           timeout=20)
    assert refused, "the refused TLS handshake left no event"


def test_an_incoming_cfind_is_audited_without_the_values_asked(
        orthanc: dict[str, Any], pacs: Any, audit_events: Callable[..., list[dict[str, Any]]]) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "TLS-SECRET-PID"
    query.AccessionNumber = "TLS-SECRET-ACC"  # with PatientID: a key set no other test's query has
    query.StudyInstanceUID = ""
    assoc = _associate(orthanc, modality_tls())
    assert assoc.is_established
    try:
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    mine = {"0008,0050", "0010,0020"}
    found = audit_events("study.queried", lambda e: e["details"].get("operation") == "C-FIND"
                         and mine <= set(e["details"].get("keys", ())), timeout=20)
    assert found, "the C-FIND left no study.queried event"
    event = found[-1]
    assert (event["actor"]["username"], event["actor"]["network_address"]) == ("DEVMODALITY", "127.0.0.1")
    assert event["details"]["level"] == "STUDY" and "0010,0020" in event["details"]["keys"]
    log = Path(orthanc["log"]).read_text(errors="replace")
    for value in ("TLS-SECRET-PID", "TLS-SECRET-ACC"):
        assert value not in str(event) and value not in log, f"the query value {value} was recorded"
