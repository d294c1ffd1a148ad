"""Who viewed this patient: the report lists exactly one patient's accesses, however odd the IDs.

A store holds accesses to two patients (and to patients whose IDs look like the first one's:
another case, a prefix, a LIKE wildcard), a listing that names the first patient second, a study
of the first patient recorded without its patient, a credential-looking PatientID and IDs with
JSON-special characters.  The report for each must hold exactly that patient's records."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.audit import patient_report as pr
from bridge.audit.store import open_store
from bridge.cli import main
from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind
from bridge.kek import KeyEncryptor
from bridge.pacs.audit_shipper import AuditShipper, purpose_of_use
from bridge.pacs.scopes import StudyInfo, Target
from bridge.store import db

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
S1, S1B, S2 = "1.2.840.1.1", "1.2.840.1.2", "1.2.840.2.1"
ALICE = ev.Actor("a1@https://bridge", "rad.alice", "pacs-viewer", "10.0.0.5")
BOB = ev.Actor("b2@https://bridge", "rad.bob", "pacs-viewer", "10.0.0.6")


def access(actor: ev.Actor, *pairs: tuple[str | None, str | None], minutes: int,
           type_: AuditEventType = AuditEventType.STUDY_ACCESSED, **details: Any) -> ev.AuditEvent:
    objects: list[ev.ParticipantObject] = []
    for study, patient in pairs:  # as the plugin writes them: study, patient, study, patient ...
        if study:
            objects.append(ev.study(study))
        if patient:
            objects.append(ev.patient(patient))
    denied = type_ == AuditEventType.ACCESS_DENIED
    return ev.AuditEvent(type_, outcome=4 if denied else 0, actor=actor, objects=tuple(objects),
                         time=T0 + dt.timedelta(minutes=minutes),
                         details={"pacs": "orthanc", "method": "GET", "paths": ["/studies/x"],
                                  "permission": "view", "requests": 3, "purpose_of_use": ["TREAT"], **details})


@pytest.fixture
def trail(store):
    events = {
        "p1-view": access(ALICE, (S1, "P1"), minutes=1),
        "p1-denied": access(BOB, (S1, "P1"), minutes=2, type_=AuditEventType.ACCESS_DENIED, reason="no grant"),
        "p2-view": access(BOB, (S2, "P2"), minutes=3),
        "listing-p1-second": access(BOB, (S2, "P2"), (S1B, "P1"), minutes=4,
                                    type_=AuditEventType.STUDY_QUERIED),
        "p1-study-alone": access(ALICE, (S1, None), minutes=5, type_=AuditEventType.STUDY_DOWNLOADED,
                                 permission="download"),
        "p2-study-alone": access(ALICE, (S2, None), minutes=6),
        "lowercase-p1": access(ALICE, ("1.9.1", "p1"), minutes=7),
        "prefix-p10": access(ALICE, ("1.9.2", "P10"), minutes=8),
        "wildcard": access(ALICE, ("1.9.3", "P%"), minutes=9),
        "underscore": access(ALICE, ("1.9.4", "P_"), minutes=10),
        "btg": access(ALICE, (S1, "P1"), minutes=11, purpose_of_use=["BTG"]),
    }
    store.append_many(list(events.values()))
    # not accesses: an auditor's earlier query about P1, a rejected ingest naming P1
    store.append(ev.AuditEvent(AuditEventType.AUDIT_LOG_USED, actor=ALICE, details={"patient": "P1"},
                               objects=(ev.patient("P1"),), time=T0 + dt.timedelta(minutes=12)))
    return events


def ids(accesses: list[pr.Access]) -> list[str]:
    return [a.event_id for a in accesses]


def test_exactly_the_first_patients_accesses(store, trail) -> None:
    got = pr.patient_accesses(store, "P1")
    want = [trail[k].event_id for k in ("p1-view", "p1-denied", "listing-p1-second", "p1-study-alone", "btg")]
    assert ids(got) == want


def test_exactly_the_second_patients_accesses(store, trail) -> None:
    got = pr.patient_accesses(store, "P2")
    # S2 is P2's study (named alone in p2-study-alone); the listing names both patients
    assert ids(got) == [trail[k].event_id for k in ("p2-view", "listing-p1-second", "p2-study-alone")]


def test_a_listing_of_several_patients_does_not_give_its_studies_to_each(store, trail) -> None:
    """S1B appears only in the listing naming P2 and P1: a later record of S1B alone is neither's."""
    alone = access(ALICE, (S1B, None), minutes=13)
    store.append(alone)
    for pid in ("P1", "P2"):
        got = ids(pr.patient_accesses(store, pid))
        assert trail["listing-p1-second"].event_id in got and alone.event_id not in got


def test_the_column_query_alone_misses_the_second_patient(store, trail) -> None:
    """Why the report does not stop at ``query(patient=...)``: the column holds the first patient."""
    assert trail["listing-p1-second"].event_id not in [r["event_id"] for r in store.query(patient="P1")]


@pytest.mark.parametrize("pid, key", [("p1", "lowercase-p1"), ("P10", "prefix-p10"), ("P%", "wildcard"),
                                      ("P_", "underscore")])
def test_look_alike_ids_are_other_patients(store, trail, pid, key) -> None:
    assert ids(pr.patient_accesses(store, pid)) == [trail[key].event_id]


@pytest.mark.parametrize("pid", ["Basic 4711", 'O"Brien\\1', "P\u202e1", "P" * 300, "Bearer x.y.z"])
def test_odd_ids_are_found_by_the_value(store, trail, pid) -> None:
    e = access(ALICE, ("1.7.7", pid), minutes=20)
    other = access(BOB, ("1.7.8", pid + "x"), minutes=21)
    store.append_many([e, other])
    assert ids(pr.patient_accesses(store, pid)) == [e.event_id]
    if "4711" in pid:  # stored as its redaction marker, never as the value
        assert "4711" not in json.dumps(store.query(patient=pid))


def test_second_position_of_an_odd_id_is_found(store) -> None:
    e = access(ALICE, ("1.1", "P-A"), ("1.2", "Basic 4711"), minutes=1)
    store.append(e)
    assert ids(pr.patient_accesses(store, "Basic 4711")) == [e.event_id]


def test_period(store, trail) -> None:
    got = pr.patient_accesses(store, "P1", since=T0 + dt.timedelta(minutes=2), until=T0 + dt.timedelta(minutes=5))
    assert ids(got) == [trail["p1-denied"].event_id, trail["listing-p1-second"].event_id]


def test_fields_of_an_access(store, trail) -> None:
    got = {a.event_id: a for a in pr.patient_accesses(store, "P1")}
    view, denied, btg = (got[trail[k].event_id] for k in ("p1-view", "p1-denied", "btg"))
    assert (view.allowed, view.username, view.user_id, view.network_address) == (True, "rad.alice",
                                                                                  ALICE.user_id, "10.0.0.5")
    assert (view.purpose_of_use, view.permission, view.method, view.paths, view.requests) == (
        ("TREAT",), "view", "GET", ("/studies/x",), 3)
    assert view.studies == (S1,)
    assert (denied.allowed, denied.reason, denied.username) == (False, "no grant", "rad.bob")
    assert btg.purpose_of_use == ("BTG",)


def test_audited_report_records_the_read_and_does_not_list_it(store, trail) -> None:
    auditor = ev.Actor(username="privacy.officer", client_id="pacs-bridge-cli")
    before = store.count()
    rep = pr.audited_report(store, "P1", auditor, fmt="csv")
    assert store.count() == before + 1
    (used,) = store.query(types=["audit.log_used"], user="privacy.officer")
    details = json.loads(used["body"])["details"]
    assert details["patient"] == "P1" and details["action"] == "patient-report" and details["accesses"] == 5
    assert ids(pr.patient_accesses(store, "P1")) == ids(rep.accesses)  # the read is not an access


def test_renderings(store, trail) -> None:
    store.append(access(ev.Actor("x@i", "=HYPERLINK(\"http://evil\")", None, "10.9.9.9"), (S1, "P1"), minutes=30))
    rep = pr.patient_report(store, "P1")
    data = json.loads(pr.render(rep, "json"))
    assert data["patient_id"] == "P1" and data["summary"] == {
        "accesses": 5, "denied": 1, "users": sorted(["rad.alice", "rad.bob", '=HYPERLINK("http://evil")'])}
    rows = list(csv.DictReader(io.StringIO(pr.render(rep, "csv"))))
    assert len(rows) == 6 and rows[-1]["username"].startswith("'=")
    assert rows[0]["purpose_of_use"] == "TREAT"
    text = pr.render(rep, "text")
    assert "REFUSED" in text and "purpose=TREAT" in text and "rad.bob" in text and len(text.splitlines()) == 4 + 6
    with pytest.raises(ValueError, match="format"):
        pr.render(rep, "xml")


def test_cli_patient_report(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    monkeypatch.setenv("PACS_BRIDGE_STORE__URL", url)
    monkeypatch.setenv("PACS_BRIDGE_AUDIT__CHECKPOINT_KEY_FILE", str(tmp_path / "cp.key"))
    monkeypatch.setenv("PACS_BRIDGE_TOKENS__KEY_ENCRYPTION_KEY", KeyEncryptor.generate_secret())
    db.migrate(url)
    store = open_store(load_config())
    e1, e2 = access(ALICE, (S1, "Basic 4711"), minutes=1), access(BOB, (S2, "P2"), minutes=2)
    store.append_many([e1, e2])
    res = CliRunner().invoke(main, ["audit", "patient-report", "Basic 4711", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [a["event_id"] for a in json.loads(res.output)["accesses"]] == [e1.event_id]
    res = CliRunner().invoke(main, ["audit", "patient-report", "P2", "--since", "2026-03-01T08:01:30",
                                    "--format", "csv"])
    assert res.exit_code == 0 and res.output.count(e2.event_id) == 1
    res = CliRunner().invoke(main, ["audit", "patient-report", "P2", "--since", "yesterday"])
    assert res.exit_code == 2 and "--since" in res.output
    used = store.query(types=["audit.log_used"])
    assert len(used) == 2 and all(json.loads(u["body"])["details"]["action"] == "patient-report" for u in used)


# ---------------------------------------------------------------------------- the plugin records the purpose


def test_the_plugins_access_event_records_the_purpose_of_use(tmp_path) -> None:
    sent: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.extend(json.loads(body)["events"])
        return 202

    s = AuditShipper(source="orthanc", issuer="https://b", spool_dir=str(tmp_path / "spool"),
                     audit_url="https://b/audit/events", post=post)
    claims = {"sub": "u1", "preferred_username": "rad.alice", "jti": "j-1", "extensions": {"ihe_iua": {
        "purpose_of_use": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}}}
    study = StudyInfo("orthanc-1", "1.2.3", "P1", "Radiology", "Hospital")
    s.record("allow", claims, "GET", "/studies/orthanc-1", "10.0.0.1", "view", "ok", Target("studies", "orthanc-1"),
             [study])
    s.record("deny", {**claims, "jti": "j-2"}, "GET", "/studies/orthanc-1", "10.0.0.1", "view", "no grant",
             Target("studies", "orthanc-1"), [study])
    assert s.flush() == 2
    assert [e["details"]["purpose_of_use"] for e in sent] == [["TREAT"], ["TREAT"]]
    assert ev.AuditEvent.from_dict(sent[0]).first(ObjectKind.PATIENT) == "P1"


@pytest.mark.parametrize("ext, want", [
    (None, []), ("x", []), ({"ihe_iua": None}, []), ({"ihe_iua": {"purpose_of_use": "ETREAT"}}, ["ETREAT"]),
    ({"ihe_iua": {"purpose_of_use": {"code": "BTG"}}}, ["BTG"]),
    ({"ihe_iua": {"purpose_of_use": [{"code": None}, {"nocode": 1}, True, {"code": "TREAT"}]}}, ["TREAT"]),
])
def test_purpose_of_use_of_odd_claims(ext, want) -> None:
    assert purpose_of_use({"extensions": ext} if ext is not None else {}) == want


def test_a_refused_request_names_the_patient_of_its_target(tmp_path) -> None:
    """A request refused for a missing permission (a radiologist's DELETE) is decided before its
    study is looked up; the shipper must still name the study and its patient, or the refusal
    is missing from that patient's access report (found by the integration test)."""
    sent: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.extend(json.loads(body)["events"])
        return 202

    class Resolver:
        def last_known(self, target: Target) -> list[StudyInfo]:
            return [StudyInfo(target.key, "1.2.3", "P1", "Radiology", "Hospital")]

    s = AuditShipper(source="orthanc", issuer="https://b", spool_dir=str(tmp_path / "spool"),
                     audit_url="https://b/audit/events", post=post, resolver=Resolver())  # type: ignore[arg-type]
    s.record("deny", {"sub": "u1", "jti": "j"}, "DELETE", "/studies/orthanc-1", "10.0.0.1", "delete",
             "missing permission delete", Target("studies", "orthanc-1"), None)
    s.record("deny", None, "GET", "/studies/orthanc-1", "10.0.0.1", None, "no token")  # no target: nothing to name
    assert s.flush() == 2
    refused = ev.AuditEvent.from_dict(sent[0])
    assert refused.type == AuditEventType.ACCESS_DENIED and refused.first(ObjectKind.PATIENT) == "P1"
    assert refused.first(ObjectKind.STUDY) == "1.2.3"
    assert ev.AuditEvent.from_dict(sent[1]).first(ObjectKind.PATIENT) is None
