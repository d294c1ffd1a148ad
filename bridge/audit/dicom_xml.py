"""Render an audit event as a DICOM PS3.15 A.5 ``AuditMessage`` (the ATNA / RFC 3881 XML).

Built with xml.etree so every attribute and text is escaped by the serializer (a username or a
patient name with ``<`` or ``"`` cannot break the document).  The serializer does not stop
characters XML 1.0 forbids (NUL and other C0 controls, lone surrogates, U+FFFE/U+FFFF), so every
attribute and text is passed through :func:`bridge.core.audit_events.escape_unsafe` before it is
written, whatever the event model let through (a record edited in the database, an older
version's record): the message is always well-formed.  Codes come from bridge/core/audit_codes.py.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

from bridge.core.audit_codes import BTG, OBJECT_CODES, ROLE_APPLICATION, Code, ObjectKind, all_type_codes, codes_for
from bridge.core.audit_events import AuditEvent, escape_unsafe, format_time

AUDIT_SOURCE_TYPE_APPLICATION_SERVER = "4"


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.display}
    )


def _net_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 = IP address, 1 = machine name, 5 = URI."""
    if "://" in address:
        return "5"
    host = address.strip("[]")
    if host.replace(".", "").isdigit() or ":" in host:
        return "2"
    return "1"


def to_element(
    event: AuditEvent, *, source_id: str = "pacs-sso-bridge", enterprise_site_id: str = "HOSPITAL"
) -> ET.Element:
    codes = codes_for(event.type)
    root = ET.Element("AuditMessage")
    eid = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": codes.action.value,
            "EventDateTime": format_time(event.time),
            "EventOutcomeIndicator": str(int(event.outcome)),  # type: ignore[arg-type]
        },
    )
    _coded(eid, "EventID", codes.event_id)
    for tc in all_type_codes(event.type):
        _coded(eid, "EventTypeCode", tc)
    if event.description:
        ET.SubElement(eid, "EventOutcomeDescription").text = event.description
    if event.purpose_of_use == "BTG":
        _coded(eid, "PurposeOfUse", BTG)

    actor = event.actor
    if actor is not None and (actor.user_id or actor.username or actor.client_id):
        attrs = {
            "UserID": actor.user_id or actor.client_id or actor.username or "",
            "UserIsRequestor": "true" if actor.is_requestor else "false",
        }
        if actor.username:
            attrs["UserName"] = actor.username
        if actor.client_id and actor.user_id:
            attrs["AlternativeUserID"] = actor.client_id
        if actor.network_address:
            attrs["NetworkAccessPointID"] = actor.network_address
            attrs["NetworkAccessPointTypeCode"] = _net_type(actor.network_address)
        ET.SubElement(root, "ActiveParticipant", attrs)
    # the bridge itself, as the application that recorded the event
    app = ET.SubElement(
        root,
        "ActiveParticipant",
        {"UserID": source_id, "UserIsRequestor": "false" if actor and actor.is_requestor else "true"},
    )
    _coded(app, "RoleIDCode", ROLE_APPLICATION)

    src = ET.SubElement(
        root, "AuditSourceIdentification", {"AuditEnterpriseSiteID": enterprise_site_id, "AuditSourceID": source_id}
    )
    ET.SubElement(
        src,
        "AuditSourceTypeCode",
        {
            "csd-code": AUDIT_SOURCE_TYPE_APPLICATION_SERVER,
            "codeSystemName": "DCM",
            "originalText": "Application Server",
        },
    )

    for obj in event.objects:
        oc = OBJECT_CODES[obj.kind]
        po = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": obj.id,
                "ParticipantObjectTypeCode": str(oc.type_code),
                "ParticipantObjectTypeCodeRole": str(oc.role),
            },
        )
        _coded(po, "ParticipantObjectIDTypeCode", oc.id_type)
        if obj.name:
            ET.SubElement(po, "ParticipantObjectName").text = obj.name
        if obj.kind == ObjectKind.QUERY:
            ET.SubElement(po, "ParticipantObjectQuery").text = _b64(obj.id)
        for k, v in obj.detail.items():
            ET.SubElement(
                po, "ParticipantObjectDetail", {"type": str(k), "value": _b64(str(v))}
            )
    _make_safe(root)
    return root


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "backslashreplace")).decode("ascii")


def _make_safe(root: ET.Element) -> None:
    """Every attribute value and text XML 1.0 can carry (see the module docstring)."""
    for el in root.iter():
        for k, v in el.attrib.items():
            el.attrib[k] = escape_unsafe(str(v), keep_whitespace=True)
        if el.text is not None:
            el.text = escape_unsafe(str(el.text), keep_whitespace=True)


def to_xml(event: AuditEvent, **kwargs: str) -> str:
    """The AuditMessage as a UTF-8 XML string (no XML declaration: syslog MSG carries it as is)."""
    return ET.tostring(to_element(event, **kwargs), encoding="unicode")
