"""DICOM PS3.15 A.5 output is well-formed XML 1.0 whatever the input: every produced message is
parsed by a real XML parser (expat) over a fuzz of nasty values in every field."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from bridge.audit import dicom_xml
from bridge.audit.chain import row_to_event
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind

NASTY = ["\x00", "\x01\x02\x08\x0b\x0c\x0e\x1f", "\x7f\x80\x85\x9f", "\ud800", "\udfff", "a\ud83d", "]]>",
         "<![CDATA[x]]>", "&", "&amp;", "<", ">", "\"'", "\ufffe", "\uffff", "\U0010ffff", "\t\n\r",
         "\r\n", "\u2028\u2029", "\ufeff", "<?xml version='1.0'?>", "<!DOCTYPE x [<!ENTITY a 'b'>]>&a;",
         "Basic 4711", "x" * 3000]


def _fuzz_value(rng: random.Random) -> str:
    parts = [rng.choice(NASTY) for _ in range(rng.randint(1, 4))]
    parts.append("".join(chr(rng.choice([rng.randint(0, 0x1f), rng.randint(0xd800, 0xdfff),
                                          rng.randint(0x20, 0x10ffff)])) for _ in range(rng.randint(0, 12))))
    rng.shuffle(parts)
    return "".join(parts)


def _event(v: str, w: str) -> ev.AuditEvent:
    return ev.AuditEvent(
        AuditEventType.STUDY_ACCESSED,
        actor=ev.Actor(v, w, v, w),
        objects=(ev.patient(v, w), ev.study(w, **{"Note": v}), ev.ParticipantObject(ObjectKind.QUERY, v, w),
                 ev.ParticipantObject(ObjectKind.NODE, w, v, {v[:10] or "k": w})),
        correlation_id=v, description=w, details={"x": v},
    )


def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml.encode("utf-8"))  # bytes: the document as it goes on the wire


@pytest.mark.parametrize("value", NASTY)
def test_each_nasty_value_gives_well_formed_xml(value: str):
    root = _parse(dicom_xml.to_xml(_event(value, value)))
    assert root.tag == "AuditMessage"


def test_fuzz_every_message_parses():
    rng = random.Random(20261129)
    for _ in range(400):
        e = _event(_fuzz_value(rng), _fuzz_value(rng))
        _parse(dicom_xml.to_xml(e))


def test_values_bypassing_the_event_model_still_give_well_formed_xml():
    """A row edited in the database (or written by an older version) is rendered too."""
    e = _event("ok", "ok")
    object.__setattr__(e, "description", "bad\x00\ud800]]>")
    object.__setattr__(e.objects[0], "id", "P\x01\udc80")
    object.__setattr__(e.objects[1], "detail", {"k\x02": "v\x03\ud800"})
    root = _parse(dicom_xml.to_xml(e))
    assert root.find("EventIdentification/EventOutcomeDescription").text.startswith("bad")


def test_stored_row_round_trip_renders(store):
    rng = random.Random(7)
    for _ in range(20):
        store.append(_event(_fuzz_value(rng), _fuzz_value(rng)))
    for row in store.query():
        _parse(dicom_xml.to_xml(row_to_event(row)))
