"""The plugin's audit shipper keeps every event whatever the DICOM data or the token claims hold."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.pacs.audit_shipper import ACCESS_EVENTS, AuditShipper
from bridge.pacs.scopes import StudyInfo, Target

JWT = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"


def shipper(tmp_path) -> tuple[AuditShipper, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.extend(json.loads(body)["events"])
        return 202

    return AuditShipper(source="orthanc", issuer="https://b", spool_dir=str(tmp_path / "spool"),
                        audit_url="https://b/audit/events", post=post), sent


@pytest.mark.parametrize("patient_id", ["Basic 4711", "Bearer x.y.z", JWT, "P\x00\x1b", "P\ud800", "P" * 900])
def test_an_access_to_a_patient_with_a_credential_looking_id_is_kept(tmp_path, patient_id):
    s, sent = shipper(tmp_path)
    study = StudyInfo("orthanc-1", "1.2.3", patient_id, "Radiology", "Hospital")
    claims = {"sub": "u1", "preferred_username": "rad.alice", "jti": "j-1"}
    s.record("allow", claims, "GET", "/studies/orthanc-1", "10.0.0.1", "view", "ok",
             Target("studies", "orthanc-1"), [study])
    assert s.flush() == 1 and s.stats["dropped_invalid"] == 0
    (e,) = sent
    pids = [o["id"] for o in e["objects"] if o["kind"] == "patient"]
    assert len(pids) == 1 and pids[0] == ev.AuditEvent.from_dict(e).first(ev.ObjectKind.PATIENT)
    assert "4711" not in json.dumps(e) and JWT not in json.dumps(e)
    assert e["details"]["normalised"]


def test_claims_with_odd_types_or_credentials_are_kept(tmp_path):
    s, sent = shipper(tmp_path)
    claims = {"sub": JWT, "preferred_username": "Basic 4711", "client_id": ["x"], "jti": 12, "iss": {"a": 1}}
    s.record("deny", claims, "GET", "/studies/x\x00\ud800?q=Bearer abc", "Basic 4711", None, f"bad {JWT}")
    assert s.flush() == 1 and s.stats["dropped_invalid"] == 0
    text = json.dumps(sent[0])
    assert "4711" not in text and JWT not in text and "abc" not in text


def test_only_pacs_access_types_are_emitted():
    assert set(ACCESS_EVENTS.values()) <= ev.PACS_INGEST_TYPES
    assert {AuditEventType.ACCESS_DENIED, AuditEventType.STUDY_QUERIED,
            AuditEventType.DICOM_ASSOCIATION_REFUSED} <= ev.PACS_INGEST_TYPES


def test_a_corrupt_spool_line_does_not_stall_the_replay(tmp_path):
    """A line cut by a crash mid-write must not keep the spool (and every later event) from the bridge."""
    s, sent = shipper(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    good = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("P-1"),)).to_dict()
    later = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("P-2"),)).to_dict()
    (spool / "spool-1.jsonl").write_text(json.dumps(good) + "\n" + '{"type": "study.acc' + "\n")
    (spool / "spool-2.jsonl").write_text(json.dumps(later) + "\n")
    s.flush()
    assert [e["event_id"] for e in sent] == [good["event_id"], later["event_id"]]
    assert not list(spool.glob("spool-*")) and not list(spool.glob("sending-*"))
    kept = list(spool.glob("corrupt-*.jsonl"))  # the unreadable line is kept for a human, not lost
    assert len(kept) == 1 and '"type": "study.acc' in kept[0].read_text()
    assert oct(kept[0].stat().st_mode & 0o777) == "0o600" and s.stats["corrupt_lines"] == 1


def test_spool_files_another_user_could_write_are_never_replayed(tmp_path):
    """The spool is replayed into the audit trail: a file others can write, or a symlink to one,
    would be forged records (failed before: every spool-*.jsonl was replayed)."""
    s, sent = shipper(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    own = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("P-own"),)).to_dict()
    forged = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("P-forged"),)).to_dict()
    (spool / "spool-1.jsonl").write_text(json.dumps(own) + "\n")
    loose = spool / "spool-2.jsonl"
    loose.write_text(json.dumps(forged) + "\n")
    loose.chmod(0o666)
    elsewhere = tmp_path / "planted.jsonl"
    elsewhere.write_text(json.dumps(forged) + "\n")
    (spool / "spool-3.jsonl").symlink_to(elsewhere)
    s.flush()
    assert [e["event_id"] for e in sent] == [own["event_id"]]
    assert loose.exists() and (spool / "spool-3.jsonl").is_symlink()  # left for a human, not deleted


def test_a_spool_directory_others_can_write_is_not_replayed(tmp_path):
    s, sent = shipper(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    (spool / "spool-1.jsonl").write_text(json.dumps(
        ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("P-x"),)).to_dict()) + "\n")
    s.flush()
    assert sent == [] and s.stats["untrusted_spool"] >= 1


def test_an_access_records_the_departments_of_its_studies(tmp_path):
    """The access review counts accesses outside a scoped role's departments: the plugin's event
    must say which department each study belongs to (issue 13)."""
    s, sent = shipper(tmp_path)
    studies = [StudyInfo("o-1", "1.2.3", "P1", "Cardiology", "H"), StudyInfo("o-2", "1.2.4", "P1", "", "H")]
    s.record("allow", {"sub": "u1", "jti": "j"}, "GET", "/studies/o-1", "10.0.0.1", "view", "ok",
             Target("studies", "o-1"), studies)
    s.flush()
    assert sent[0]["details"]["departments"] == ["Cardiology"]
