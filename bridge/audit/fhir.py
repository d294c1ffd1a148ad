"""IHE BALP (Basic Audit Log Patterns) FHIR R4 ``AuditEvent`` export.

One mapping from the same codes as the DICOM XML: ``type`` = the DICOM EventID, ``subtype`` =
the EventTypeCodes, agents and entities from the actor and participant objects.  Tokens appear
as ``agent.policy = urn:ietf:params:oauth:jti:<jti>`` (BALP OAUTHaccessTokenUse.Minimal), never
the token.
"""

from __future__ import annotations

from typing import Any

from bridge.core.audit_codes import DCM, IHE_TX, LOCAL_SCHEME, OBJECT_CODES, Code, ObjectKind, all_type_codes, codes_for
from bridge.core.audit_events import AuditEvent, format_time

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
#: IHE IUA: the audit of ITI-71 Get Access Token (type DCM#110114, subtype ITI-71)
IUA_71 = "https://profiles.ihe.net/ITI/IUA/StructureDefinition/IHE.IUA.71"
LOCAL_SYSTEM = "urn:pacs-sso-bridge:audit-event-type"
SYSTEMS = {
    DCM: DCM_SYSTEM,
    IHE_TX: "urn:ihe:event-type-code",
    LOCAL_SCHEME: LOCAL_SYSTEM,
    "RFC-3881": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
}
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _coding(code: Code) -> dict[str, str]:
    return {"system": SYSTEMS.get(code.system, code.system), "code": code.code, "display": code.display}


def _profile(event: AuditEvent) -> str:
    codes = codes_for(event.type)
    if any(c.code == "ITI-71" for c in codes.type_codes):
        return IUA_71
    if codes.event_id.code == "110106":
        return BALP + "IHE.BasicAudit.PrivacyDisclosure.Source"
    if codes.event_id.code == "110112":
        return (
            BALP + "IHE.BasicAudit.PatientQuery" if event.first(ObjectKind.PATIENT) else BALP + "IHE.BasicAudit.Query"
        )
    if codes.event_id.code in ("110103", "110104"):
        return BALP + "IHE.BasicAudit.PatientRead" if event.first(ObjectKind.PATIENT) else BALP + "IHE.BasicAudit.Read"
    return BALP + "IHE.BasicAudit"


def to_fhir(
    event: AuditEvent,
    *,
    source_id: str = "pacs-sso-bridge",
    enterprise_site_id: str = "HOSPITAL",
    record_id: str | None = None,
) -> dict[str, Any]:
    """The AuditEvent resource as a dict (``json.dumps`` it)."""
    codes = codes_for(event.type)
    res: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record_id or event.event_id,
        "meta": {"profile": [_profile(event)]},
        "type": _coding(codes.event_id),
        "subtype": [_coding(c) for c in all_type_codes(event.type)],
        "action": codes.action.value,
        "recorded": format_time(event.time),
        "outcome": str(int(event.outcome)),  # type: ignore[arg-type]
    }
    if event.description:
        res["outcomeDesc"] = event.description
    if event.purpose_of_use:
        res["purposeOfEvent"] = [{"coding": [{"system": ACT_REASON, "code": event.purpose_of_use}]}]
    agents: list[dict[str, Any]] = []
    a = event.actor
    jtis = [o.id for o in event.objects if o.kind == ObjectKind.TOKEN]
    if a is not None and (a.user_id or a.username or a.client_id):
        agent: dict[str, Any] = {
            "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
            "who": {"identifier": {"value": a.user_id or a.client_id or a.username}},
            "requestor": a.is_requestor,
        }
        if a.username:
            agent["who"]["display"] = a.username
        if a.client_id and a.user_id:
            agent["altId"] = a.client_id
        if a.network_address:
            agent["network"] = {"address": a.network_address, "type": "2"}
        if jtis:
            agent["policy"] = [f"urn:ietf:params:oauth:jti:{j}" for j in jtis]
        agents.append(agent)
    agents.append(
        {
            "type": {"coding": [{"system": DCM_SYSTEM, "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"value": source_id}, "display": source_id},
            "requestor": a is None or not a.is_requestor,
        }
    )
    res["agent"] = agents
    res["source"] = {
        "site": enterprise_site_id,
        "observer": {"display": source_id},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = []
    for obj in event.objects:
        oc = OBJECT_CODES[obj.kind]
        what: dict[str, Any]
        if obj.kind == ObjectKind.PATIENT:
            what = {"identifier": {"value": obj.id}}
        elif obj.kind == ObjectKind.STUDY:
            what = {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{obj.id}"}}
        else:
            what = {
                "identifier": {
                    "system": SYSTEMS.get(oc.id_type.system, oc.id_type.system) + "#" + oc.id_type.code,
                    "value": obj.id,
                }
            }
        ent: dict[str, Any] = {
            "what": what,
            "type": {"system": ENTITY_TYPE, "code": str(oc.type_code)},
            "role": {"system": OBJECT_ROLE, "code": str(oc.role)},
        }
        if obj.name:
            ent["name"] = obj.name
        if obj.detail:
            ent["detail"] = [{"type": k, "valueString": str(v)} for k, v in obj.detail.items()]
        entities.append(ent)
    if entities:
        res["entity"] = entities
    return res
