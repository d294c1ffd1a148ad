"""Audit evasion: attacker-chosen text in any recorded field never drops an event.

A PatientID such as ``Basic 4711`` (settable by any uploader or modality), a JWT-looking
PatientName, control characters, lone surrogates, odd types or over-long values are replaced or
normalised, flagged in the event (``details.normalised``) and the event is kept; an auditor
still finds it by the value they know (``audit query --patient 'Basic 4711'``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind

JWT = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
NASTY = ["Basic 4711", "Bearer abc.def", "DPoP xyz", JWT, "x\x00y", "a\x1b[31mred", "lone\ud800surrogate",
         "tab\there", "cr\rlf\n", "]]>", "<x a='\"'>&amp;", "\ufffe\uffff", "\x85\x9f", "P" * 5000]


def flags(e: ev.AuditEvent) -> list[str]:
    return list(e.details.get("normalised") or [])


def test_credential_looking_patient_id_is_replaced_by_a_stable_marker_and_kept():
    e = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("Basic 4711", JWT), ev.study("1.2.3")))
    pid = e.first(ObjectKind.PATIENT)
    assert pid == ev.redaction_marker("Basic 4711") and pid.startswith("redacted-sha256:")
    assert len(pid) == len("redacted-sha256:") + 16
    assert ev.redaction_marker("Basic 4711") == pid  # stable: the same value, the same marker
    assert e.objects[0].name == ev.redaction_marker(JWT) and JWT not in json.dumps(e.to_dict())
    assert any(f.startswith("object patient.id") and "credential" in f for f in flags(e))
    assert any(f.startswith("object patient.name") for f in flags(e))


@pytest.mark.parametrize("field", ["user_id", "username", "client_id", "network_address"])
@pytest.mark.parametrize("value", NASTY)
def test_every_actor_field_is_normalised_never_refused(field: str, value: str):
    a = ev.Actor(**{field: value})
    e = ev.AuditEvent(AuditEventType.ACCESS_DENIED, actor=a, objects=(ev.study(value), ev.patient(value, value)),
                      correlation_id=value, description=value, details={"paths": [value], value[:20]: value})
    text = json.dumps(e.to_dict(), ensure_ascii=False)
    text.encode("utf-8")  # no lone surrogate survives
    assert not any(ch in text for ch in ("\x00", "\x1b", "\x85", "\ufffe"))
    # the whole value, not "4711" alone: a random event id or timestamp may hold those digits
    assert "Basic 4711" not in text and JWT not in text and "abc.def" not in text
    if value not in ("]]>", "<x a='\"'>&amp;"):  # markup is escaped by each output, not changed here
        assert flags(e), "a normalised event must say so"
    assert ev.AuditEvent.from_dict(e.to_dict()) == e  # normalisation is idempotent


def test_odd_types_and_over_long_values_are_normalised_and_flagged():
    a = ev.Actor(user_id=12345, username=b"bytes\xff", network_address=["10.0.0.1"])  # type: ignore[arg-type]
    e = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=a,
                      objects=(ev.patient("P" * 500), ev.study("1." * 100)), correlation_id=7)  # type: ignore[arg-type]
    assert e.actor.user_id == "12345" and isinstance(e.actor.username, str)
    assert len(e.first(ObjectKind.PATIENT)) <= ev.FIELD_LIMITS["patient_id"]
    assert len(e.first(ObjectKind.STUDY)) <= ev.FIELD_LIMITS["study_uid"]
    assert e.correlation_id == "7"
    f = " ".join(flags(e))
    assert "type" in f and "length" in f


def test_clean_values_are_not_flagged():
    e = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor("s@i", "rad.alice", "viewer", "10.0.0.1"),
                      objects=(ev.patient("P-001", "Doe^Jane"), ev.study("1.2.826.0.1")),
                      details={"paths": ["/studies/x"], "note": "multi\nline ok"})
    assert "normalised" not in e.details


def test_store_keeps_it_and_query_finds_it_by_the_known_value(store):
    nasty = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor("s@i", JWT),
                          objects=(ev.patient("Basic 4711"), ev.study("1.2.3\x00")))
    long_pid = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.patient("Q" * 300),))
    store.append_many([nasty, long_pid])
    assert [r["event_id"] for r in store.query(patient="Basic 4711")] == [nasty.event_id]
    assert [r["event_id"] for r in store.query(user=JWT)] == [nasty.event_id]
    assert [r["event_id"] for r in store.query(study="1.2.3\x00")] == [nasty.event_id]
    assert [r["event_id"] for r in store.query(patient="Q" * 300)] == [long_pid.event_id]
    assert store.query(patient=ev.redaction_marker("Basic 4711"))  # the marker itself works too
    assert store.verify().ok


@pytest.mark.parametrize("value", NASTY)
def test_store_appends_and_verifies_whatever_the_value(store, value: str):
    e = ev.AuditEvent(AuditEventType.STUDY_QUERIED, actor=ev.Actor(value, value, value, value),
                      objects=(ev.patient(value, value), ev.study(value, Note=value)), correlation_id=value,
                      description=value, details={value: [value, {value: value}]})
    store.append(e)
    assert store.query(patient=value) and store.verify().ok


def _rows(out: str) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO(out)))


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20",
                                  " =", "\t=", "\r\n="])
def test_csv_export_guards_every_formula_lead(store, lead: str):
    import io

    from bridge.audit.export import export_csv

    store.append(ev.AuditEvent(AuditEventType.LOGIN_FAILURE, actor=ev.Actor("s@i", "bob"),
                               description=f"{lead}HYPERLINK(\"http://evil\")"))
    out = io.StringIO()
    export_csv(store.query(), out)
    rows = _rows(out.getvalue())
    desc = rows[1][rows[0].index("description")]
    assert desc.startswith("'"), repr(desc)


def test_dangerous_kinds_are_still_keyed(store):
    e = ev.AuditEvent(AuditEventType.STUDY_ACCESSED, objects=(ev.ParticipantObject(ObjectKind.TOKEN, JWT),))
    assert e.first(ObjectKind.TOKEN) == ev.redaction_marker(JWT)


def test_redaction_marker_is_not_itself_redacted():
    m = ev.redaction_marker("Basic 4711")
    assert ev.patient(m).id == m and not ev.looks_like_credential(m)


def _any(x: Any) -> Any:
    return x


def test_a_percent_encoded_credential_in_a_uri_is_redacted():
    e = ev.AuditEvent(AuditEventType.ACCESS_DENIED,
                      details={"paths": ["/studies/Basic%204711x/series", "/x/Bearer%20abc.def.ghi"]})
    text = json.dumps(e.to_dict())
    assert "4711x" not in text and "abc.def" not in text
    assert e.details["paths"][0] == "/studies/Basic [redacted-credential]"  # base64 may hold "/"
