"""Output formats: DICOM A.5 XML, IHE BALP FHIR, RFC 5424 / 5425 syslog."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from bridge.audit.dicom_xml import to_xml
from bridge.audit.fhir import to_fhir
from bridge.audit.syslog import format_message, frame
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType


def _event(**kw):
    base = dict(
        actor=ev.Actor("f3a9@https://kc/realms/hospital", 'o"brien<&>', "viewer", "10.1.2.3"),
        objects=(ev.patient("PAT1", "Doe^Jane"), ev.study("1.2.3.4", NumberOfInstances="3"), ev.token("jti-123")),
    )
    base.update(kw)
    return ev.AuditEvent(AuditEventType.STUDY_ACCESSED, **base)


def test_xml_shape_and_escaping():
    root = ET.fromstring(to_xml(_event()))
    assert root.tag == "AuditMessage"
    eid = root.find("EventIdentification")
    assert eid.get("EventActionCode") == "R" and eid.get("EventOutcomeIndicator") == "0"
    assert eid.find("EventID").get("csd-code") == "110103"
    assert eid.find("EventTypeCode").get("codeSystemName") == "99PACSBRIDGE"
    parts = root.findall("ActiveParticipant")
    assert parts[0].get("UserName") == 'o"brien<&>' and parts[0].get("UserIsRequestor") == "true"
    assert parts[0].get("NetworkAccessPointTypeCode") == "2"
    assert parts[1].find("RoleIDCode").get("csd-code") == "110150"
    assert root.find("AuditSourceIdentification/AuditSourceTypeCode").get("csd-code") == "4"
    objs = {o.get("ParticipantObjectID"): o for o in root.findall("ParticipantObjectIdentification")}
    assert (objs["PAT1"].get("ParticipantObjectTypeCode"), objs["PAT1"].get("ParticipantObjectTypeCodeRole")) == (
        "1",
        "1",
    )
    study = objs["1.2.3.4"]
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"


def test_xml_security_alert_with_type_code_and_btg():
    e = ev.AuditEvent(AuditEventType.BREAK_GLASS_START, actor=ev.Actor("s@i", "rad.alice"))
    root = ET.fromstring(to_xml(e))
    eid = root.find("EventIdentification")
    assert eid.find("EventID").get("csd-code") == "110113"
    assert eid.find("EventTypeCode").get("csd-code") == "110127"
    assert eid.find("PurposeOfUse").get("csd-code") == "BTG"


def test_fhir_shape():
    r = to_fhir(_event())
    assert r["resourceType"] == "AuditEvent" and r["action"] == "R" and r["outcome"] == "0"
    assert r["type"]["code"] == "110103" and r["type"]["system"].endswith("/DCM")
    assert r["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientRead")
    user = r["agent"][0]
    assert user["requestor"] is True and user["type"]["coding"][0]["code"] == "IRCP"
    assert user["policy"] == ["urn:ietf:params:oauth:jti:jti-123"]
    assert r["source"]["type"][0]["code"] == "4"
    study = next(e for e in r["entity"] if e["role"]["code"] == "3")
    assert study["what"]["identifier"]["value"] == "urn:oid:1.2.3.4"
    assert to_fhir(ev.AuditEvent(AuditEventType.TOKEN_ISSUED))["meta"]["profile"][0].endswith("IHE.IUA.71")


def test_syslog_rfc5424_and_octet_counting():
    e = _event()
    msg = format_message(e, seq=7, hostname="bridge host")
    m = re.match(
        rb"<85>1 (\S+) (\S+) pacs-sso-bridge (\d+) IHE\+RFC-3881 \[pacsbridge@32473 seq=\"7\" eventID=\"([^\"]+)\"\] "
        rb"\xef\xbb\xbf<AuditMessage>",
        msg,
    )
    assert m, msg[:200]
    assert m.group(1).endswith(b"Z") and m.group(2) == b"bridgehost" and m.group(4).decode() == e.event_id
    framed = frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg)
