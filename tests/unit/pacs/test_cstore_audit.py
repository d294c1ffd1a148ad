"""The plugin's audit of DICOM traffic it can observe (bridge/pacs/audit_shipper.py): instances
received by C-STORE (origin read from Orthanc's metadata) and failed DICOM TLS handshakes (from
Orthanc's log).  Orthanc's REST API is a dict of answers here; the real one: tests/integration/pacs/
test_dicom_tls.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.pacs.audit_shipper import AuditShipper
from bridge.pacs.scopes import StudyResolver


def _orthanc(instances: dict[str, dict[str, str]]) -> dict[str, Any]:
    """REST answers for instances ``id -> metadata``, each in study ``s-<id>`` (uid ``1.2.<n>``)."""
    answers: dict[str, Any] = {}
    for n, (iid, meta) in enumerate(sorted(instances.items())):
        study = meta.pop("study", f"s-{n}")
        answers[f"/instances/{iid}/metadata?expand"] = meta
        answers[f"/instances/{iid}"] = {"ParentSeries": f"se-{study}"}
        answers[f"/series/se-{study}"] = {"ParentStudy": study}
        answers[f"/studies/{study}"] = {"MainDicomTags": {"StudyInstanceUID": f"1.2.{study}"},
                                        "PatientMainDicomTags": {"PatientID": f"P-{study}"}}
        answers[f"/studies/{study}/instances"] = []
    return answers


def _shipper(tmp_path: Path, answers: dict[str, Any], log: Path | None = None) -> tuple[AuditShipper, list[Any]]:
    sent: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.extend(json.loads(body)["events"])
        return 202

    def rest_get(uri: str) -> bytes:
        if uri not in answers:
            raise ValueError(13)  # Orthanc's "unknown resource"
        return json.dumps(answers[uri]).encode()

    resolver = StudyResolver(rest_get, lambda uri, body: b"[]")
    return AuditShipper(source="orthanc", issuer="https://b", spool_dir=str(tmp_path / "spool"),
                        audit_url="https://b/audit/events", post=post, resolver=resolver,
                        orthanc_log_file=str(log) if log else None), sent


def dicom(aet: str, ip: str, **extra: str) -> dict[str, str]:
    return {"Origin": "DicomProtocol", "RemoteAET": aet, "RemoteIP": ip, "CalledAET": "PACS", **extra}


def test_cstores_become_one_event_per_calling_ae_address_and_study(tmp_path: Path) -> None:
    answers = _orthanc({"i1": dicom("CT01", "10.0.0.5", study="a"), "i2": dicom("CT01", "10.0.0.5", study="a"),
                        "i3": dicom("MR01", "10.0.0.6", study="a"), "i4": dicom("CT01", "10.0.0.5", study="b")})
    s, sent = _shipper(tmp_path, answers)
    for iid in ("i1", "i2", "i3", "i4"):
        s.record_stored(iid)
    assert s.flush() == 3
    by = {(e["actor"]["username"], e["actor"]["network_address"],
           next(o["id"] for o in e["objects"] if o["kind"] == "study")): e for e in sent}
    assert set(by) == {("CT01", "10.0.0.5", "1.2.a"), ("MR01", "10.0.0.6", "1.2.a"), ("CT01", "10.0.0.5", "1.2.b")}
    ct = by[("CT01", "10.0.0.5", "1.2.a")]
    assert ct["type"] == "study.uploaded" and ct["details"]["instances"] == 2
    assert ct["details"]["operation"] == "C-STORE" and ct["details"]["called_aet"] == "PACS"
    assert {"kind": "node", "id": "CT01"} in ct["objects"] and {"kind": "patient", "id": "P-a"} in ct["objects"]


def test_uploads_over_rest_are_left_to_the_request_filter(tmp_path: Path) -> None:
    answers = _orthanc({"i1": {"Origin": "RestApi", "RemoteIP": "127.0.0.1"}, "i2": {"Origin": "Plugins"},
                        "i3": {}})
    s, sent = _shipper(tmp_path, answers)
    for iid in ("i1", "i2", "i3", "gone"):  # "gone": deleted before the flush
        s.record_stored(iid)
    assert s.flush() == 0 and sent == []


def test_a_value_that_looks_like_a_credential_is_still_recorded(tmp_path: Path) -> None:
    """The calling AE title is the modality's to choose: the event model normalises it, never drops it."""
    answers = _orthanc({"i1": dicom("Basic 4711", "10.0.0.5")})
    s, sent = _shipper(tmp_path, answers)
    s.record_stored("i1")
    assert s.flush() == 1
    assert "4711" not in json.dumps(sent)


def test_failed_dicom_tls_handshakes_from_the_log_are_refusals(tmp_path: Path) -> None:
    log = tmp_path / "orthanc.log"
    log.write_text("")
    s, sent = _shipper(tmp_path, {}, log)
    log.write_text(
        "E1129 06:34:35.989366 CommandDispatcher.cpp:284] Receiving Association failed: TLS error: "
        "peer did not return a certificate\n"
        "E1129 06:34:35.999180 CommandDispatcher.cpp:284] Receiving Association failed: TLS error: "
        "certificate verify failed\n"
        "W1129 06:34:36.0 main.cpp:1] something else\n")
    assert s.flush() == 2
    assert [e["type"] for e in sent] == ["dicom.association_refused"] * 2
    reasons = [e["details"]["reason"] for e in sent]
    assert reasons == ["DICOM TLS handshake failed: peer did not return a certificate",
                       "DICOM TLS handshake failed: certificate verify failed"]


FIND_LINE = ('W1129 07:04:25.989592 LuaContext.cpp:94] Lua says: pacs-bridge dicom-find {"CalledAet":"PACS",'
             '"Keys":["0008,0052","0010,0020","0020,000d"],"Level":"STUDY","RemoteAet":"CT01","RemoteIp":"10.0.0.5"}')


def test_an_incoming_cfind_from_the_lua_filter_line_is_a_query_event(tmp_path: Path) -> None:
    log = tmp_path / "orthanc.log"
    log.write_text("")
    s, sent = _shipper(tmp_path, {}, log)
    log.write_text(FIND_LINE + "\n")
    assert s.flush() == 1
    (e,) = sent
    assert e["type"] == "study.queried"
    assert (e["actor"]["username"], e["actor"]["network_address"]) == ("CT01", "10.0.0.5")
    assert e["details"]["operation"] == "C-FIND" and e["details"]["level"] == "STUDY"
    assert e["details"]["keys"] == ["0008,0052", "0010,0020", "0020,000d"]


@pytest.mark.parametrize("line", [
    # the same words elsewhere in a line (e.g. inside an AE title or a URI another log line quotes)
    'W1129 07:04:25.9 CommandDispatcher.cpp:1] Rejected association for remote AET Lua says: pacs-bridge '
    'dicom-find {"RemoteAet":"X"}',
    "I1129 07:04:25.9 HttpServer.cpp:9] GET /x?q=LuaContext.cpp:94] Lua says: pacs-bridge dicom-find {}",
    'W1129 07:04:25.9 LuaContext.cpp:94] Lua says: pacs-bridge dicom-find not-json',
])
def test_only_orthancs_own_lua_line_counts(tmp_path: Path, line: str) -> None:
    log = tmp_path / "orthanc.log"
    log.write_text("")
    s, sent = _shipper(tmp_path, {}, log)
    log.write_text(line + "\n")
    s.flush()
    assert not [e for e in sent if e["type"] == "study.queried"]
