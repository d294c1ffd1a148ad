"""The code table and the event model's secret guard."""

from __future__ import annotations

import pytest

from bridge.core import audit_events as ev
from bridge.core.audit_codes import CODES, OBJECT_CODES, AuditEventType, ObjectKind, Outcome, codes_for

JWT = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"


def test_every_event_type_has_codes_and_every_object_kind_too():
    assert set(CODES) == set(AuditEventType)
    assert set(OBJECT_CODES) == set(ObjectKind)


@pytest.mark.parametrize(
    ("etype", "event_id", "type_code", "action", "outcome"),
    [
        (AuditEventType.LOGIN_SUCCESS, "110114", "110122", "E", 0),
        (AuditEventType.LOGIN_FAILURE, "110114", "110122", "E", 4),
        (AuditEventType.MFA_FAILURE, "110114", "110122", "E", 4),
        (AuditEventType.LOGOUT, "110114", "110123", "E", 0),
        (AuditEventType.TOKEN_ISSUED, "110114", "ITI-71", "E", 0),
        (AuditEventType.ROLE_ASSIGNED, "110113", "110137", "E", 0),
        (AuditEventType.ROLE_MAPPING_CHANGED, "110113", "110136", "E", 0),
        (AuditEventType.CONFIG_CHANGED, "110113", "110129", "E", 0),
        (AuditEventType.BREAK_GLASS_START, "110113", "110127", "E", 0),
        (AuditEventType.BREAK_GLASS_STOP, "110113", "110138", "E", 0),
        (AuditEventType.SYNC_THRESHOLD_STOP, "110113", "110129", "E", 8),
        (AuditEventType.STUDY_ACCESSED, "110103", None, "R", 0),
        (AuditEventType.STUDY_QUERIED, "110112", None, "E", 0),
        (AuditEventType.STUDY_TRANSFER_STARTED, "110102", None, "E", 0),
        (AuditEventType.STUDY_DOWNLOADED, "110104", None, "R", 0),
        (AuditEventType.STUDY_DELETED, "110105", None, "D", 0),
        (AuditEventType.SHARE_CREATED, "110106", None, "R", 0),
        (AuditEventType.AUDIT_LOG_USED, "110101", None, "R", 0),
    ],
)
def test_codes_follow_the_standard(etype, event_id, type_code, action, outcome):
    c = codes_for(etype)
    assert c.event_id.code == event_id and c.event_id.system == "DCM"
    assert c.action.value == action and int(c.default_outcome) == outcome
    if type_code:
        assert c.type_codes[0].code == type_code


def test_110136_and_110137_are_never_event_ids():
    assert all(c.event_id.code not in {"110136", "110137", "110129", "110127"} for c in CODES.values())


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "client_secret",
        "access_token",
        "refreshToken",
        "Authorization",
        "otp",
        "totp_code",
        "id_token",
        "cookie",
        "apiKey",
        "private_key",
        "bind_password",
    ],
)
def test_secret_keys_are_redacted(key):
    assert ev.redact({key: "hunter2"}) == {key: ev.REDACTED}


@pytest.mark.parametrize(
    "key", ["token_jti", "jti", "token_type", "token_endpoint", "username", "footprint", "study_uid"]
)
def test_ordinary_keys_are_kept(key):
    assert ev.redact({key: "v"}) == {key: "v"}


def test_jwts_and_credentials_inside_values_are_stripped():
    out = ev.redact(
        {
            "note": f"client sent {JWT} twice",
            "hdr": [f"Bearer {JWT}"],
            "n": 3,
            "uid": "1.2.840.10008.5.1.4.1.1.2",
            "host": "registry.hospital.internal",
        }
    )
    assert JWT not in str(out)
    assert out["note"] == "client sent [redacted-jwt] twice"
    assert out["hdr"] == ["Bearer [redacted-credential]"]
    assert out["uid"] == "1.2.840.10008.5.1.4.1.1.2" and out["host"] == "registry.hospital.internal"


def test_nested_details_and_description_are_redacted():
    e = ev.AuditEvent(
        AuditEventType.LOGIN_FAILURE,
        details={"form": {"username": "a", "password": "p"}},
        description=f"bad token {JWT}",
    )
    assert e.details == {"form": {"username": "a", "password": ev.REDACTED},
                         "normalised": ["description: credential"]}
    assert JWT not in e.description


def test_a_token_where_an_identifier_belongs_is_replaced_never_refused():
    """Refusing would let anyone who controls an identifier (a PatientID) keep an event out of the trail."""
    assert ev.token(JWT).id == ev.redaction_marker(JWT)
    a = ev.Actor(user_id=JWT)
    assert a.user_id == ev.redaction_marker(JWT) and a.normalised == ("actor.user_id: credential",)


def test_defaults_and_round_trip():
    e = ev.AuditEvent(AuditEventType.LOGIN_FAILURE, actor=ev.Actor("s@i", "bob"), objects=(ev.user("s@i", "bob"),))
    assert e.outcome == Outcome.MINOR_FAILURE and e.time.tzinfo is not None
    assert ev.AuditEvent.from_dict(e.to_dict()) == e
    assert ev.AuditEvent(AuditEventType.BREAK_GLASS_START).purpose_of_use == "BTG"
