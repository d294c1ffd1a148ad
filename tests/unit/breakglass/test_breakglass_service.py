"""Break-glass service: who may ask, the fresh second factor, the grant it yields (one study or
patient, 60 minutes, gone when the role goes), the PACS's verdict on it, the review queue, the
alerts (syslog alert severity, spooled webhook), and BTG in the token only with such a grant."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from bridge.audit.syslog import SyslogSender, SyslogTarget, split_frames
from bridge.breakglass import alerts
from bridge.breakglass.service import BreakGlass, BreakGlassRefused, Item, Target
from bridge.core import grants as grants_mod
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType, Outcome, codes_for
from bridge.core.audit_events import AuditEvent
from bridge.pacs.gate import judge
from bridge.pacs.scopes import StudyInfo
from bridge.pacs.scopes import Target as PacsTarget
from bridge.policy.loader import load_policy
from bridge.store.db import engine, migrate
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import Subject
from bridge.tokens.store import Assignment

POLICY = Path(__file__).resolve().parents[3] / "examples" / "policy.yaml"
UID, OTHER_UID, SAME_PATIENT_UID = "1.2.3.4", "1.2.3.5", "1.2.3.6"
NOW = 1_800_000_000.0


class Roles:
    """Assignments by subject, changeable mid-test (a role removed by the sync)."""

    def __init__(self, **held: list[tuple[str, dict[str, Any]]]):
        self.held = held

    def assignments(self, subject_id: str | None, username: str | None) -> list[Assignment]:
        return [Assignment(r, s) for r, s in self.held.get(subject_id or "", [])]


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    events: list[AuditEvent] = []
    alerted: list[tuple[AuditEvent, Item]] = []
    clock = [NOW]
    roles = Roles(**{"guid-card": [("cardiologist", {"departments": ["Cardiology"]})],
                     "guid-rad": [("radiologist", {})], "guid-audit": [("auditor", {})]})
    bg = BreakGlass(engine(url), load_policy(POLICY), roles, events.append, "https://bridge.test",
                    mfa.MfaRule(), fresh_auth_seconds=300, alert=lambda e, i: alerted.append((e, i)),
                    clock=lambda: clock[0])
    return {"bg": bg, "events": events, "alerted": alerted, "clock": clock, "roles": roles}


CARD = Subject("guid-card", "card.jon")
AUDITOR = Subject("guid-audit", "comp.nils")


def fresh(age: float = 5, **over: Any) -> dict[str, Any]:
    return {"auth_time": int(NOW - age), "acr": "mfa", "amr": ["pwd", "otp"], **over}


def ask(world: dict[str, Any], subject: Subject = CARD, claims: dict[str, Any] | None = None,
        target: Target | None = None, **kw: Any) -> Item:
    return world["bg"].request(subject, fresh() if claims is None else claims, target or Target("study", UID),
                               "Unconscious patient in ED, prior chest CT needed",
                               purpose_of_use=kw.pop("purpose", "BTG"), client_id="pacs-gateway", **kw)


def test_a_fresh_mfa_request_yields_a_60_minute_grant_on_that_study_only(world: dict[str, Any]) -> None:
    item = ask(world)
    (grant,) = world["bg"].grants(CARD)
    assert grant.kind == "break-glass" and grant.studies == frozenset({UID}) and grant.patients is None
    assert grant.permissions == frozenset({"view", "download"})
    assert grant.exp == int(NOW) + 3600 and item.expires_at.timestamp() == NOW + 3600
    assert world["bg"].grants(Subject("guid-rad")) == ()  # nobody else's


def test_the_grant_is_audited_with_the_emergency_override_codes_and_btg(world: dict[str, Any]) -> None:
    ask(world)
    (event,) = [e for e in world["events"] if e.type is AuditEventType.BREAK_GLASS_START]
    assert [c.code for c in codes_for(event.type).type_codes] == ["110127"]
    assert codes_for(event.type).event_id.code == "110113"
    assert event.purpose_of_use == "BTG"
    assert event.first(event.objects[1].kind) == UID
    assert event.details["reason"].startswith("Unconscious")
    assert len(world["alerted"]) == 1 and world["alerted"][0][0] is event


@pytest.mark.parametrize("claims, why", [
    (fresh(acr="basic", amr=["pwd"]), "no second factor"),
    (fresh(age=301), "old"),
    ({"acr": "mfa", "amr": ["otp"]}, "auth_time"),
])
def test_no_grant_without_a_fresh_second_factor(world: dict[str, Any], claims: dict[str, Any], why: str) -> None:
    with pytest.raises(BreakGlassRefused) as exc:
        ask(world, claims=claims)
    assert exc.value.status == 401 and why in exc.value.message
    assert world["bg"].grants(CARD) == () and world["alerted"] == []
    assert any(e.type is AuditEventType.ACCESS_DENIED for e in world["events"])


def test_a_login_from_before_the_request_does_not_count(world: dict[str, Any]) -> None:
    """The gateway asks for a new login after the request: an SSO session answering with an older
    auth_time (prompt/max_age stripped from the redirect) is refused."""
    with pytest.raises(BreakGlassRefused, match="predates"):
        ask(world, claims=fresh(age=5), asked_at=NOW - 2)
    assert ask(world, claims=fresh(age=0), asked_at=NOW - 0.5).target.value == UID


def test_refused_when_no_role_has_the_emergency_capability(world: dict[str, Any]) -> None:
    with pytest.raises(BreakGlassRefused, match="none of your roles"):
        ask(world, Subject("guid-rad", "rad.alice"))
    assert world["bg"].grants(Subject("guid-rad")) == ()


@pytest.mark.parametrize("purpose", ["TREAT", "btg", "BTG ", None, ["BTG"]])
def test_purpose_must_be_exactly_btg(world: dict[str, Any], purpose: Any) -> None:
    with pytest.raises(BreakGlassRefused, match="purpose_of_use"):
        ask(world, purpose=purpose)


@pytest.mark.parametrize("kind, value", [
    ("study", "1.2.3.4.x"), ("study", "1." * 40), ("study", "01.2"), ("Study", UID), ("series", UID),
    ("patient", "P\\1"), ("patient", "P\n1"), ("patient", "x" * 65), ("patient", ""), ("study", None)])
def test_odd_targets_are_refused(kind: str, value: Any) -> None:
    with pytest.raises(BreakGlassRefused) as exc:
        Target.parse(kind, value)
    assert exc.value.status == 400


def test_the_grant_ends_with_the_role_and_with_its_time(world: dict[str, Any]) -> None:
    ask(world)
    assert world["bg"].grants(CARD)
    world["roles"].held["guid-card"] = []  # the sync removed the role
    assert world["bg"].grants(CARD) == ()
    world["roles"].held["guid-card"] = [("cardiologist", {"departments": ["Cardiology"]})]
    assert world["bg"].grants(CARD)
    world["clock"][0] = NOW + 3600  # never renewed
    assert world["bg"].grants(CARD) == ()


STUDY = StudyInfo("o-1", UID, "P-7", "Oncology", "Hospital")
OTHER = StudyInfo("o-2", OTHER_UID, "P-8", "Oncology", "Hospital")
SAME_PATIENT = StudyInfo("o-3", SAME_PATIENT_UID, "P-7", "Oncology", "Hospital")
BY_ID = {s.orthanc_id: s for s in (STUDY, OTHER, SAME_PATIENT)}


def _studies_of(target: PacsTarget) -> list[StudyInfo]:
    return [BY_ID[target.key]] if target.level == "studies" and target.key in BY_ID else []


def _claims(item: Item, *, role_grants: bool = True) -> dict[str, Any]:
    grants = [item.grant().to_claim()]
    if role_grants:
        grants.insert(0, {"kind": "role", "role": "cardiologist", "permissions": ["download", "view"],
                          "scope": {"departments": ["Cardiology"]}})
    return {"grants": grants}


def test_the_pacs_allows_the_study_and_refuses_another_and_the_same_patients_other_study(
        world: dict[str, Any]) -> None:
    claims = _claims(ask(world))
    assert judge(claims, "GET", "/studies/o-1", None, _studies_of).allow
    assert judge(claims, "GET", "/studies/o-1/archive", None, _studies_of).allow
    assert not judge(claims, "GET", "/studies/o-2", None, _studies_of).allow
    assert not judge(claims, "GET", "/studies/o-3", None, _studies_of).allow  # same patient, other study
    assert not judge(claims, "DELETE", "/studies/o-1", None, _studies_of).allow


def test_a_patient_grant_covers_that_patients_studies_only(world: dict[str, Any]) -> None:
    claims = _claims(ask(world, target=Target("patient", "P-7")))
    assert judge(claims, "GET", "/studies/o-1", None, _studies_of).allow
    assert judge(claims, "GET", "/studies/o-3", None, _studies_of).allow
    assert not judge(claims, "GET", "/studies/o-2", None, _studies_of).allow


def test_an_expired_grant_is_refused_at_the_pacs(world: dict[str, Any]) -> None:
    claims = _claims(ask(world))
    claims["grants"][1]["exp"] = int(time.time()) - 1
    assert not judge(claims, "GET", "/studies/o-1", None, _studies_of).allow


# ---------------------------------------------------------------- review queue


def test_another_person_with_audit_logs_closes_the_item(world: dict[str, Any]) -> None:
    item = ask(world)
    assert world["bg"].open_count() == 1
    closed = world["bg"].close(item.id, AUDITOR, {"audit-logs"}, "justified", "ED note confirms")
    assert closed.review_state == "justified" and closed.reviewer_username == "comp.nils"
    assert world["bg"].open_count() == 0 and world["bg"].items() == []
    reviewed = [e for e in world["events"] if e.type is AuditEventType.BREAK_GLASS_REVIEWED]
    assert reviewed and reviewed[0].outcome is Outcome.SUCCESS
    with pytest.raises(BreakGlassRefused) as exc:
        world["bg"].close(item.id, AUDITOR, {"audit-logs"}, "not-justified", "changed my mind")
    assert exc.value.status == 409


@pytest.mark.parametrize("reviewer, perms, verdict, comment, status", [
    (CARD, {"audit-logs"}, "justified", "it was me", 403),  # the requester
    (Subject("other-id", "CARD.JON"), {"audit-logs"}, "justified", "same name", 403),  # the requester's name
    (Subject("guid-rad", "rad.alice"), {"view", "download"}, "justified", "no permission", 403),
    (AUDITOR, {"audit-logs"}, "Justified", "case", 400),
    (AUDITOR, {"audit-logs"}, "maybe", "odd", 400),
    (AUDITOR, {"audit-logs"}, "justified", "   ", 400),
    (AUDITOR, {"audit-logs"}, "justified", None, 400),
])
def test_the_requester_and_non_reviewers_cannot_close(world: dict[str, Any], reviewer: Subject, perms: set[str],
                                                      verdict: Any, comment: Any, status: int) -> None:
    item = ask(world)
    with pytest.raises(BreakGlassRefused) as exc:
        world["bg"].close(item.id, reviewer, perms, verdict, comment)
    assert exc.value.status == status
    assert world["bg"].open_count() == 1
    assert any(e.type is AuditEventType.ACCESS_DENIED and "review refused" in e.details["reason"]
               for e in world["events"])


def test_an_unknown_item_is_404(world: dict[str, Any]) -> None:
    with pytest.raises(BreakGlassRefused) as exc:
        world["bg"].close("no-such", AUDITOR, {"audit-logs"}, "justified", "x")
    assert exc.value.status == 404


# ---------------------------------------------------------------- BTG in the token


SETTINGS = claims_mod.TokenSettings("https://bridge.test", "pacs")


def test_btg_is_refused_in_a_token_without_a_break_glass_grant() -> None:
    grant = claims_mod.grant_from_roles(["radiologist"], {"radiologist": ["view"]})
    with pytest.raises(ValueError, match="BTG"):
        claims_mod.build(SETTINGS, Subject("s"), grant, "c", purpose_of_use="BTG")


def test_a_token_with_a_break_glass_grant_states_btg(world: dict[str, Any]) -> None:
    item = ask(world)
    grant = claims_mod.Grant(("cardiologist",), (item.grant(),))
    body = claims_mod.build(SETTINGS, Subject("s"), grant, "c")
    assert [p["code"] for p in body["extensions"]["ihe_iua"]["purpose_of_use"]] == ["TREAT", "BTG"]
    body = claims_mod.build(SETTINGS, Subject("s"), grant, "c", purpose_of_use="BTG")
    assert [p["code"] for p in body["extensions"]["ihe_iua"]["purpose_of_use"]] == ["BTG"]
    assert grants_mod.from_claims(body)[0].kind == "break-glass"


# ---------------------------------------------------------------- alerts


def test_the_syslog_alert_has_alert_severity(tmp_path: Path) -> None:
    sender = SyslogSender(SyslogTarget("127.0.0.1", 1), tmp_path / "spool", severity=1)
    event = AuditEvent(AuditEventType.BREAK_GLASS_START)
    (frame,) = split_frames(sender.enqueue(event).read_bytes())
    assert frame.split(b" ", 1)[1].startswith(b"<81>1 ")  # facility 10 * 8 + severity 1


class _Receiver(BaseHTTPRequestHandler):
    got: list[bytes] = []
    status = 500

    def do_POST(self) -> None:
        _Receiver.got.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(_Receiver.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (the receiver's), and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "receiver.pem", tmp_path / "receiver-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _receiver(tmp_path: Path) -> tuple[HTTPServer, Path]:
    cert, key = _self_signed(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cert


def test_the_webhook_keeps_the_alert_until_the_receiver_takes_it(world: dict[str, Any], tmp_path: Path) -> None:
    server, ca = _receiver(tmp_path)
    try:
        hook = alerts.Webhook(f"https://127.0.0.1:{server.server_port}/hook", tmp_path / "hook",
                              ca_file=str(ca), timeout=5)
        item = ask(world)
        hook.enqueue(alerts.payload(item, "https://bridge.test/pacs/break-glass/reviews"))
        _Receiver.status = 500
        assert hook.flush() == 0 and len(hook.pending()) == 1  # refused: kept
        _Receiver.status = 204
        assert hook.flush() == 1 and hook.pending() == []
        body = json.loads(_Receiver.got[-1])
        assert body["type"] == "break-glass.started" and body["grant"]["target"] == {"kind": "study", "value": UID}
        text = _Receiver.got[-1].decode().lower()
        assert "token" not in text and "secret" not in text and "cookie" not in text
    finally:
        server.shutdown()


def test_the_webhook_refuses_a_receiver_outside_its_ca(world: dict[str, Any], tmp_path: Path) -> None:
    server, _ = _receiver(tmp_path)
    _Receiver.status = 204
    try:
        hook = alerts.Webhook(f"https://127.0.0.1:{server.server_port}/hook", tmp_path / "hook", ca_file=None)
        hook.enqueue({"type": "x"})
        assert hook.flush() == 0 and len(hook.pending()) == 1
    finally:
        server.shutdown()


def test_expires_at_is_utc(world: dict[str, Any]) -> None:
    item = ask(world)
    assert item.expires_at.tzinfo is not None and item.expires_at - item.created_at == dt.timedelta(minutes=60)


def test_the_end_of_a_grant_is_recorded_once(world: dict[str, Any]) -> None:
    item = ask(world)
    assert world["bg"].record_ended() == 0  # still running
    world["clock"][0] = NOW + 3600
    assert world["bg"].record_ended() == 1 and world["bg"].record_ended() == 0
    (stop,) = [e for e in world["events"] if e.type is AuditEventType.BREAK_GLASS_STOP]
    assert stop.details["grant_id"] == item.id and stop.purpose_of_use == "BTG"
    assert [c.code for c in codes_for(stop.type).type_codes] == ["110138"]


def test_without_mfa_even_a_role_without_the_capability_hears_only_about_mfa(world: dict[str, Any]) -> None:
    with pytest.raises(BreakGlassRefused) as exc:
        ask(world, Subject("guid-rad", "rad.alice"), claims=fresh(acr="basic", amr=["pwd"]))
    assert exc.value.status == 401
