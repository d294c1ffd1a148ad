"""THE table of audit event codes: every event the bridge records, with its DICOM PS3.15 A.5 /
IHE ATNA codes.  Everything else (XML, FHIR, docs, queries) reads it from here.

Sources: DICOM PS3.15 A.5 (Audit Trail Message Format Profile), PS3.16 CID 400-404.
110136/110137 etc. are EventTypeCodes under EventID 110113 (Security Alert), never EventIDs.
Each event also carries a local EventTypeCode in the private scheme ``99PACSBRIDGE`` whose code
is the event type's value (DICOM reserves coding scheme designators starting "99" for local
use), so a collector can tell apart events that share the standard codes (login ok vs. MFA failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

DCM = "DCM"
LOCAL_SCHEME = "99PACSBRIDGE"
IHE_TX = "IHE Transactions"


@dataclass(frozen=True)
class Code:
    """A coded value as A.5 writes it: csd-code, codeSystemName, originalText (display)."""

    code: str
    system: str
    display: str


class Outcome(IntEnum):
    """EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # e.g. a wrong password: the action failed, nothing broke
    SERIOUS_FAILURE = 8  # e.g. a locked account, a tripped safety threshold
    MAJOR_FAILURE = 12  # the function itself failed


class Action(StrEnum):
    """EventActionCode."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class AuditEventType(StrEnum):
    """Every event the bridge records.  The value is the stable name used in the database, in
    queries (``--type``) and as the local EventTypeCode."""

    LOGIN_SUCCESS = "login.success"
    LOGIN_FAILURE = "login.failure"
    MFA_FAILURE = "login.mfa_failure"
    STEP_UP = "login.step_up"
    LOGOUT = "logout"
    TOKEN_ISSUED = "token.issued"
    TOKEN_EXCHANGED = "token.exchanged"
    TOKEN_INTROSPECTED = "token.introspected"
    TOKEN_REVOKED = "token.revoked"
    ACCESS_DENIED = "access.denied"
    STUDY_ACCESSED = "study.accessed"
    STUDY_TRANSFER_STARTED = "study.transfer_started"
    STUDY_DOWNLOADED = "study.downloaded"
    STUDY_UPLOADED = "study.uploaded"
    STUDY_DELETED = "study.deleted"
    STUDY_MODIFIED = "study.modified"
    STUDY_SENT = "study.sent"
    STUDY_QUERIED = "study.queried"
    ROLE_ASSIGNED = "role.assigned"
    ROLE_REMOVED = "role.removed"
    USER_CHANGED = "user.changed"
    SYNC_STARTED = "sync.started"
    SYNC_FINISHED = "sync.finished"
    SYNC_THRESHOLD_STOP = "sync.threshold_stop"
    CONFIG_CHANGED = "config.changed"
    ROLE_MAPPING_CHANGED = "config.role_mapping_changed"
    KEY_ROTATED = "key.rotated"
    BREAK_GLASS_START = "break_glass.start"
    BREAK_GLASS_STOP = "break_glass.stop"
    SHARE_CREATED = "share.created"
    SHARE_USED = "share.used"
    SHARE_REVOKED = "share.revoked"
    AUDIT_LOG_USED = "audit.log_used"
    DICOM_ASSOCIATION_REFUSED = "dicom.association_refused"
    AUDIT_INPUT_REJECTED = "audit.input_rejected"
    STORAGE_INTEGRITY_FAILURE = "storage.integrity_failure"
    SHARE_PASSCODE_FAILED = "share.passcode_failed"
    SHARE_LOCKED_OUT = "share.locked_out"
    SHARE_PASSCODE_RENEWED = "share.passcode_renewed"
    SHARE_EXPORTED = "share.exported"
    REVIEW_STARTED = "review.started"
    REVIEW_DECIDED = "review.decided"
    REVIEW_ESCALATED = "review.escalated"
    BREAK_GLASS_REVIEWED = "break_glass.reviewed"


# --- DICOM codes used below (PS3.16 CID 400-404) ---
APPLICATION_ACTIVITY = Code("110100", DCM, "Application Activity")
AUDIT_LOG_USED = Code("110101", DCM, "Audit Log Used")
BEGIN_TRANSFERRING = Code("110102", DCM, "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = Code("110103", DCM, "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", DCM, "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", DCM, "DICOM Study Deleted")
EXPORT = Code("110106", DCM, "Export")
QUERY = Code("110112", DCM, "Query")
SECURITY_ALERT = Code("110113", DCM, "Security Alert")
USER_AUTHENTICATION = Code("110114", DCM, "User Authentication")

LOGIN = Code("110122", DCM, "Login")
LOGOUT = Code("110123", DCM, "Logout")
NODE_AUTHENTICATION = Code("110126", DCM, "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", DCM, "Emergency Override Started")
SECURITY_CONFIGURATION = Code("110129", DCM, "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", DCM, "Use of Restricted Function")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", DCM, "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = Code("110136", DCM, "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", DCM, "User Security Attributes Changed")
EMERGENCY_OVERRIDE_STOPPED = Code("110138", DCM, "Emergency Override Stopped")
LOCAL_SERVICE_STARTED = Code("110141", DCM, "Local Service Operation Started")
LOCAL_SERVICE_STOPPED = Code("110142", DCM, "Local Service Operation Stopped")
ITI_71 = Code("ITI-71", IHE_TX, "Get Access Token")
ITI_102 = Code("ITI-102", IHE_TX, "Introspect Token")

# Active participant role codes (RoleIDCode)
ROLE_APPLICATION = Code("110150", DCM, "Application")
ROLE_APPLICATION_LAUNCHER = Code("110151", DCM, "Application Launcher")
ROLE_DESTINATION = Code("110152", DCM, "Destination Role ID")
ROLE_SOURCE = Code("110153", DCM, "Source Role ID")
ROLE_DESTINATION_MEDIA = Code("110154", DCM, "Destination Media")

# ParticipantObjectIDTypeCode
STUDY_INSTANCE_UID = Code("110180", DCM, "Study Instance UID")
SOP_CLASS_UID = Code("110181", DCM, "SOP Class UID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")

#: PurposeOfUse for break-glass (HL7 v3 ActReason)
BTG = Code("BTG", "2.16.840.1.113883.5.8", "break the glass")


@dataclass(frozen=True)
class EventCodes:
    """How one bridge event is coded: EventID, EventTypeCodes, action, usual outcome."""

    event_id: Code
    type_codes: tuple[Code, ...]
    action: Action
    default_outcome: Outcome
    description: str


def _e(event_id: Code, types: tuple[Code, ...], action: Action, outcome: Outcome, text: str) -> EventCodes:
    return EventCodes(event_id, types, action, outcome, text)


T = AuditEventType
A = Action
O = Outcome  # noqa: E741

CODES: dict[AuditEventType, EventCodes] = {
    T.LOGIN_SUCCESS: _e(USER_AUTHENTICATION, (LOGIN,), A.EXECUTE, O.SUCCESS, "User logged in"),
    T.LOGIN_FAILURE: _e(USER_AUTHENTICATION, (LOGIN,), A.EXECUTE, O.MINOR_FAILURE,
                        "Login failed (serious failure 8 when the account is locked)"),
    T.MFA_FAILURE: _e(USER_AUTHENTICATION, (LOGIN,), A.EXECUTE, O.MINOR_FAILURE,
                      "Second factor missing or wrong"),
    T.STEP_UP: _e(USER_AUTHENTICATION, (LOGIN,), A.EXECUTE, O.SUCCESS,
                  "Re-authentication for a sensitive action (RFC 9470 step-up)"),
    T.LOGOUT: _e(USER_AUTHENTICATION, (LOGOUT,), A.EXECUTE, O.SUCCESS,
                 "Logout or idle timeout (the node is the requestor on timeout)"),
    T.TOKEN_ISSUED: _e(USER_AUTHENTICATION, (ITI_71,), A.EXECUTE, O.SUCCESS, "PACS access token issued"),
    T.TOKEN_EXCHANGED: _e(USER_AUTHENTICATION, (ITI_71,), A.EXECUTE, O.SUCCESS,
                          "Keycloak token exchanged for a PACS token (RFC 8693)"),
    T.TOKEN_INTROSPECTED: _e(USER_AUTHENTICATION, (ITI_102,), A.EXECUTE, O.SUCCESS,
                             "Token introspected (RFC 7662)"),
    T.TOKEN_REVOKED: _e(SECURITY_ALERT, (USER_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                        "Token revoked (RFC 7009)"),
    T.ACCESS_DENIED: _e(SECURITY_ALERT, (USE_OF_RESTRICTED_FUNCTION,), A.EXECUTE, O.MINOR_FAILURE,
                        "Request refused: missing permission, bad token or insufficient authentication"),
    T.STUDY_ACCESSED: _e(INSTANCES_ACCESSED, (), A.READ, O.SUCCESS, "Study viewed"),
    T.STUDY_TRANSFER_STARTED: _e(BEGIN_TRANSFERRING, (), A.EXECUTE, O.SUCCESS,
                                 "WADO/C-MOVE transfer of a study begun"),
    T.STUDY_DOWNLOADED: _e(INSTANCES_TRANSFERRED, (), A.READ, O.SUCCESS, "Study instances downloaded"),
    T.STUDY_UPLOADED: _e(INSTANCES_TRANSFERRED, (), A.CREATE, O.SUCCESS, "Instances stored (STOW/C-STORE)"),
    T.STUDY_DELETED: _e(STUDY_DELETED, (), A.DELETE, O.SUCCESS, "Study deleted"),
    T.STUDY_MODIFIED: _e(INSTANCES_ACCESSED, (), A.UPDATE, O.SUCCESS, "Study modified"),
    T.STUDY_SENT: _e(INSTANCES_TRANSFERRED, (), A.READ, O.SUCCESS, "Study sent to another DICOM node"),
    T.STUDY_QUERIED: _e(QUERY, (), A.EXECUTE, O.SUCCESS, "Study query (QIDO-RS / C-FIND)"),
    T.ROLE_ASSIGNED: _e(SECURITY_ALERT, (USER_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                        "User gained a PACS role"),
    T.ROLE_REMOVED: _e(SECURITY_ALERT, (USER_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                       "User lost a PACS role"),
    T.USER_CHANGED: _e(SECURITY_ALERT, (USER_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                       "User account, credential, session or group membership changed in Keycloak"),
    T.SYNC_STARTED: _e(SECURITY_ALERT, (LOCAL_SERVICE_STARTED,), A.EXECUTE, O.SUCCESS,
                       "Directory synchronisation started"),
    T.SYNC_FINISHED: _e(SECURITY_ALERT, (LOCAL_SERVICE_STOPPED,), A.EXECUTE, O.SUCCESS,
                        "Directory synchronisation finished (outcome 12 if it failed)"),
    T.SYNC_THRESHOLD_STOP: _e(SECURITY_ALERT, (SECURITY_CONFIGURATION,), A.EXECUTE, O.SERIOUS_FAILURE,
                              "Synchronisation stopped by the deletion threshold"),
    T.CONFIG_CHANGED: _e(SECURITY_ALERT, (SECURITY_CONFIGURATION,), A.EXECUTE, O.SUCCESS,
                         "Bridge, sync or Keycloak realm configuration changed"),
    T.ROLE_MAPPING_CHANGED: _e(SECURITY_ALERT, (SECURITY_ROLES_CHANGED,), A.EXECUTE, O.SUCCESS,
                               "Group-to-role mapping policy or a Keycloak role definition changed"),
    T.KEY_ROTATED: _e(SECURITY_ALERT, (SECURITY_CONFIGURATION,), A.EXECUTE, O.SUCCESS,
                      "Token signing key rotated"),
    T.BREAK_GLASS_START: _e(SECURITY_ALERT, (EMERGENCY_OVERRIDE_STARTED,), A.EXECUTE, O.SUCCESS,
                            "Emergency access (break-glass) started; PurposeOfUse BTG"),
    T.BREAK_GLASS_STOP: _e(SECURITY_ALERT, (EMERGENCY_OVERRIDE_STOPPED,), A.EXECUTE, O.SUCCESS,
                           "Emergency access ended (expiry or explicit stop)"),
    T.SHARE_CREATED: _e(EXPORT, (), A.READ, O.SUCCESS, "Study shared (internal grant or external link)"),
    T.SHARE_USED: _e(EXPORT, (), A.READ, O.SUCCESS, "External recipient retrieved a shared study"),
    T.SHARE_REVOKED: _e(SECURITY_ALERT, (OBJECT_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                        "Share revoked"),
    T.AUDIT_LOG_USED: _e(AUDIT_LOG_USED, (), A.READ, O.SUCCESS, "Audit trail read, queried or exported"),
    T.DICOM_ASSOCIATION_REFUSED: _e(SECURITY_ALERT, (NODE_AUTHENTICATION,), A.EXECUTE, O.MINOR_FAILURE,
                                    "DICOM association rejected (unknown AE or bad user identity)"),
    T.AUDIT_INPUT_REJECTED: _e(SECURITY_ALERT, (), A.EXECUTE, O.MINOR_FAILURE,
                               "An event offered to the trail (PACS plugin ingest, Keycloak event) was "
                               "not usable or not allowed; recorded in its place"),
    T.STORAGE_INTEGRITY_FAILURE: _e(SECURITY_ALERT, (), A.READ, O.SERIOUS_FAILURE,
                                    "A stored image file did not open (altered, truncated, another "
                                    "attachment's file, unknown storage key, or plaintext): not served"),
    T.SHARE_PASSCODE_FAILED: _e(USER_AUTHENTICATION, (LOGIN,), A.EXECUTE, O.MINOR_FAILURE,
                                "Wrong passcode for an external share (or a link that names no live share)"),
    T.SHARE_LOCKED_OUT: _e(SECURITY_ALERT, (USE_OF_RESTRICTED_FUNCTION,), A.EXECUTE, O.SERIOUS_FAILURE,
                           "External share locked for a source address after repeated wrong passcodes"),
    T.SHARE_PASSCODE_RENEWED: _e(SECURITY_ALERT, (OBJECT_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                                 "The sharer issued a new passcode for an external share (lockouts cleared)"),
    T.SHARE_EXPORTED: _e(EXPORT, (), A.READ, O.SUCCESS,
                         "De-identified DICOM instances of a share exported to its external recipient"),
    T.REVIEW_STARTED: _e(SECURITY_ALERT, (LOCAL_SERVICE_STARTED,), A.EXECUTE, O.SUCCESS,
                         "Access review (recertification) campaign started"),
    T.REVIEW_DECIDED: _e(SECURITY_ALERT, (USER_SECURITY_ATTRIBUTES_CHANGED,), A.EXECUTE, O.SUCCESS,
                         "Access review decision: a role assignment kept or revoked, with the reviewer's "
                         "comment (a refused decision has outcome 4)"),
    T.REVIEW_ESCALATED: _e(SECURITY_ALERT, (USE_OF_RESTRICTED_FUNCTION,), A.EXECUTE, O.MINOR_FAILURE,
                           "Access review items unanswered past the deadline, escalated to the privacy officer"),
    T.BREAK_GLASS_REVIEWED: _e(SECURITY_ALERT, (), A.EXECUTE, O.SUCCESS,
                               "Post-hoc review of an emergency access closed by another person: justified "
                               "(outcome 0) or not justified (outcome 4)"),
}

#: the only event types the PACS plugin may send to ``POST /audit/events`` (what it emits:
#: bridge/pacs/audit_shipper.py); anything else from that endpoint is a forged or broken event
PACS_INGEST_TYPES = frozenset({
    T.STUDY_ACCESSED, T.STUDY_DOWNLOADED, T.STUDY_UPLOADED, T.STUDY_DELETED, T.STUDY_MODIFIED, T.STUDY_SENT,
    T.STUDY_QUERIED, T.ACCESS_DENIED, T.DICOM_ASSOCIATION_REFUSED,
    T.STORAGE_INTEGRITY_FAILURE,
})

#: events whose EventIdentification carries PurposeOfUse BTG
BREAK_GLASS_EVENTS = frozenset({T.BREAK_GLASS_START, T.BREAK_GLASS_STOP})


def codes_for(event_type: AuditEventType) -> EventCodes:
    """The codes of ``event_type`` (KeyError if a new enum member was not added to CODES; a unit
    test checks that every member is there)."""
    return CODES[event_type]


def local_type_code(event_type: AuditEventType) -> Code:
    return Code(event_type.value, LOCAL_SCHEME, codes_for(event_type).description)


def all_type_codes(event_type: AuditEventType) -> tuple[Code, ...]:
    """The standard EventTypeCodes followed by the local one."""
    return (*codes_for(event_type).type_codes, local_type_code(event_type))


class ObjectKind(StrEnum):
    """What a participant object is; :data:`OBJECT_CODES` says how A.5 / BALP code each kind."""

    PATIENT = "patient"
    STUDY = "study"
    USER = "user"
    ROLE = "role"
    GROUP = "group"
    RULE = "rule"
    TOKEN = "token"
    QUERY = "query"
    SHARE = "share"
    CONFIG = "config"
    KEY = "key"
    AUDIT_LOG = "audit_log"
    NODE = "node"
    ATTACHMENT = "attachment"


@dataclass(frozen=True)
class ObjectCodes:
    """ParticipantObjectTypeCode (1 person, 2 system object), ...TypeCodeRole (1 patient, 3 report,
    11 security user entity, 13 security resource, 24 query) and ParticipantObjectIDTypeCode."""

    type_code: int
    role: int
    id_type: Code


def _local(code: str, display: str) -> Code:
    return Code(code, LOCAL_SCHEME, display)


OBJECT_CODES: dict[ObjectKind, ObjectCodes] = {
    ObjectKind.PATIENT: ObjectCodes(1, 1, PATIENT_NUMBER),
    ObjectKind.STUDY: ObjectCodes(2, 3, STUDY_INSTANCE_UID),
    ObjectKind.USER: ObjectCodes(1, 11, USER_IDENTIFIER),
    ObjectKind.ROLE: ObjectCodes(2, 13, _local("role", "PACS role")),
    ObjectKind.GROUP: ObjectCodes(2, 13, _local("group-dn", "Directory group DN")),
    ObjectKind.RULE: ObjectCodes(2, 13, _local("rule-id", "Mapping rule")),
    ObjectKind.TOKEN: ObjectCodes(2, 13, _local("jti", "OAuth token identifier (jti)")),
    ObjectKind.QUERY: ObjectCodes(2, 24, SOP_CLASS_UID),
    ObjectKind.SHARE: ObjectCodes(2, 13, _local("share-id", "External share")),
    ObjectKind.CONFIG: ObjectCodes(2, 13, _local("config", "Configuration item")),
    ObjectKind.KEY: ObjectCodes(2, 13, _local("kid", "Signing key id")),
    ObjectKind.AUDIT_LOG: ObjectCodes(2, 13, _local("audit-log", "Audit log")),
    ObjectKind.NODE: ObjectCodes(2, 13, _local("ae-title", "DICOM AE title")),
    ObjectKind.ATTACHMENT: ObjectCodes(2, 13, _local("attachment-uuid", "Orthanc stored attachment")),
}
