"""Keycloak user events -> audit events: the mapping on events recorded from Keycloak 26.5 (the
dev stack: a successful MFA login, a wrong password, a wrong OTP code, an unknown user; plus a
logout and blocked accounts in the same shape), the cursor and exactly-once recording.

The event source is a fake here (the admin API's answers as recorded); the integration test
tests/integration/audit/test_keycloak_events.py pulls from the real Keycloak."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.audit import jobs
from bridge.audit import keycloak_events as kce
from bridge.config import load_config
from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.kek import KeyEncryptor
from bridge.store import db
from pacs_devstack import realm

RECORDED = json.loads((Path(__file__).parent / "data" / "keycloak_events.json").read_text())
ISSUER = "https://bridge.hospital.test"
REALM = "hospital-ldap"

RAJ, NINA, SAM, LOCAL = (RECORDED[0]["userId"], RECORDED[2]["userId"], RECORDED[3]["userId"],
                         "3d9c1e55-0000-4a6b-8c7d-2e1f0a9b8c7d")
USERS = {
    RAJ: kce.KcUser("05594a58-7ef8-1041-999f-63e0e93adeda", "er.raj",
                    {RECORDED[0]["details"]["selected_credential_id"]: "otp", "pw-raj": "password"}),
    NINA: kce.KcUser("11111111-2222-4333-8444-555555555555", "er.nina", {"pw-nina": "password"}),
    SAM: kce.KcUser("66666666-7777-4888-9999-000000000000", "er.sam",
                    {RECORDED[3]["details"]["selected_credential_id"]: "otp", "pw-sam": "password"}),
    LOCAL: kce.KcUser(None, "rad.old.ray", {}),
}


class FakeSource:
    """The admin API's behaviour: types filtered, dateFrom inclusive, oldest first, first/max paging."""

    def __init__(self, events: list[dict[str, Any]]):
        self.all = events
        self.calls: list[tuple[int, int, int]] = []
        self.user_lookups = 0

    def events(self, date_from_ms: int, first: int, max_results: int) -> list[dict[str, Any]]:
        self.calls.append((date_from_ms, first, max_results))
        hits = sorted((e for e in self.all if e["type"] in kce.PULLED_TYPES and e["time"] >= date_from_ms),
                      key=lambda e: e["time"])
        return copy.deepcopy(hits[first:first + max_results])

    def user(self, user_id: str) -> kce.KcUser | None:
        self.user_lookups += 1
        return USERS.get(user_id)


def mapped(index: int) -> Any:
    e = RECORDED[index]
    return kce.to_audit_event(e, realm=REALM, issuer=ISSUER, kc_user=USERS.get(e.get("userId", "")))


def test_login_is_a_login_success_by_the_directory_id() -> None:
    a = mapped(0)
    assert a.type == AuditEventType.LOGIN_SUCCESS and a.outcome == Outcome.SUCCESS
    assert a.actor.user_id == f"{USERS[RAJ].directory_id}@{ISSUER}"
    assert (a.actor.username, a.actor.client_id, a.actor.network_address) == ("er.raj", "pacs-viewer", "127.0.0.1")
    assert a.first(kce.ev.ObjectKind.USER) == USERS[RAJ].directory_id
    assert a.details["keycloak_event_id"] == RECORDED[0]["id"] and a.details["keycloak_user_id"] == RAJ
    assert "code_id" not in a.details["keycloak_details"]  # Keycloak's session handle is not copied
    assert a.time.timestamp() * 1000 == pytest.approx(RECORDED[0]["time"])
    assert a.event_id == kce.audit_event_id(REALM, RECORDED[0]["id"])


def test_wrong_password_is_a_login_failure() -> None:
    a = mapped(2)
    assert a.type == AuditEventType.LOGIN_FAILURE and a.outcome == Outcome.MINOR_FAILURE
    assert a.details["error"] == "invalid_user_credentials"
    assert a.actor.user_id == f"{USERS[NINA].directory_id}@{ISSUER}" and a.actor.username == "er.nina"


def test_wrong_otp_is_an_mfa_failure_with_the_username_from_keycloak() -> None:
    """Keycloak reports a wrong OTP as invalid_user_credentials; the checked credential is an OTP."""
    a = mapped(3)
    assert a.type == AuditEventType.MFA_FAILURE and a.outcome == Outcome.MINOR_FAILURE
    assert a.details["reason"] == "invalid_user_credentials: otp"
    assert a.actor.username == "er.sam"  # the OTP form's event has no username detail
    assert a.actor.user_id == f"{USERS[SAM].directory_id}@{ISSUER}"


def test_a_password_credential_selected_is_not_an_mfa_failure() -> None:
    e = copy.deepcopy(RECORDED[3])
    e["details"]["selected_credential_id"] = "pw-sam"
    a = kce.to_audit_event(e, realm=REALM, issuer=ISSUER, kc_user=USERS[SAM])
    assert a is not None and a.type == AuditEventType.LOGIN_FAILURE


def test_invalid_totp_error_is_an_mfa_failure_even_without_the_user() -> None:
    e = {**RECORDED[3], "error": "invalid_totp"}
    a = kce.to_audit_event(e, realm=REALM, issuer=ISSUER, kc_user=None)
    assert a is not None and a.type == AuditEventType.MFA_FAILURE
    assert a.actor.user_id == f"{SAM}@{ISSUER}" and a.details["subject_source"].startswith("keycloak user id")


def test_unknown_user_is_a_login_failure_without_a_subject() -> None:
    a = mapped(4)
    assert a.type == AuditEventType.LOGIN_FAILURE and a.details["error"] == "user_not_found"
    # what was typed is never stored (it may be a password typed into the wrong field): a short hash
    assert a.actor.user_id is None and a.objects == ()
    assert a.actor.username.startswith("unknown#") and "no.such.user" not in a.actor.username


@pytest.mark.parametrize("index", [6, 7])
def test_blocked_account_is_a_serious_failure(index: int) -> None:
    a = mapped(index)
    assert a.type == AuditEventType.LOGIN_FAILURE and a.outcome == Outcome.SERIOUS_FAILURE
    assert a.actor.user_id == f"{LOCAL}@{ISSUER}"  # a local Keycloak account: its Keycloak id
    assert a.actor.network_address == "10.20.30.40"


def test_lockout_event_is_a_serious_failure() -> None:
    e = {**RECORDED[2], "type": "USER_DISABLED_BY_TEMPORARY_LOCKOUT", "error": None}
    a = kce.to_audit_event(e, realm=REALM, issuer=ISSUER, kc_user=USERS[NINA])
    assert a is not None and a.type == AuditEventType.LOGIN_FAILURE and a.outcome == Outcome.SERIOUS_FAILURE


def test_logout_and_ignored_types() -> None:
    assert mapped(5).type == AuditEventType.LOGOUT
    assert mapped(1) is None  # CODE_TO_TOKEN is not pulled


def test_secrets_in_details_are_redacted() -> None:
    e = copy.deepcopy(RECORDED[2])
    e["details"].update({"password": "hunter2", "otp": "123456",
                         "note": "Bearer abcdefghijklmnopqrstuvwxyz0123456789"})
    text = json.dumps(kce.to_audit_event(e, realm=REALM, issuer=ISSUER, kc_user=USERS[NINA]).to_dict())
    assert "hunter2" not in text and "123456" not in text and "abcdefghijklmnop" not in text


def test_pull_records_each_event_once_and_pages(store) -> None:
    source = FakeSource(RECORDED)
    rep = kce.pull(store, source, realm=REALM, issuer=ISSUER, page_size=3)
    assert rep.recorded == 7 and rep.duplicates == 0 and rep.fetched == 7
    assert rep.by_type == {"login.success": 1, "login.failure": 4, "login.mfa_failure": 1, "logout": 1}
    assert [c[1] for c in source.calls] == [0, 3, 6]  # paged with a fixed dateFrom
    assert source.user_lookups == 4  # once per user per pull
    again = kce.pull(store, source, realm=REALM, issuer=ISSUER, page_size=3)
    assert again.recorded == 0 and store.count() == 7
    assert source.calls[-1][0] == max(e["time"] for e in RECORDED)  # the cursor made it short
    assert store.verify().ok


def test_lost_cursor_does_not_record_twice(store) -> None:
    source = FakeSource(RECORDED)
    kce.pull(store, source, realm=REALM, issuer=ISSUER)
    kce.save_cursor(store.engine, kce.cursor_name(REALM), kce.Cursor())
    rep = kce.pull(store, source, realm=REALM, issuer=ISSUER)
    assert rep.recorded == 0 and rep.duplicates == 7 and store.count() == 7


def test_new_event_in_the_cursors_millisecond_is_taken(store) -> None:
    events = copy.deepcopy(RECORDED)
    source = FakeSource(events)
    kce.pull(store, source, realm=REALM, issuer=ISSUER)
    last = max(events, key=lambda e: e["time"])
    events.append({**copy.deepcopy(RECORDED[2]), "id": "0f0f0f0f-1111-4222-8333-444444444444", "time": last["time"]})
    rep = kce.pull(store, source, realm=REALM, issuer=ISSUER)
    assert rep.recorded == 1 and rep.by_type == {"login.failure": 1}


def test_serve_schedules_the_pull_only_with_admin_credentials(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(url)
    common = {"store": {"url": url}, "tokens": {"key_encryption_key": KeyEncryptor.generate_secret()},
              "audit": {"checkpoint_key_file": str(tmp_path / "k"),
                                               "keycloak_events_interval_seconds": 7}}

    class Sched:
        def __init__(self) -> None:
            self.jobs: dict[str, float] = {}

        def add_job(self, fn: Any, trigger: str, *, seconds: float, id: str, **_: Any) -> None:
            self.jobs[id] = seconds

    s = Sched()
    jobs.schedule(s, load_config(**common), None, None)  # type: ignore[arg-type]
    assert "audit-keycloak-events" not in s.jobs
    s = Sched()
    jobs.schedule(s, load_config(**common, keycloak={"admin_password": "x"}), None, None)  # type: ignore[arg-type]
    assert s.jobs["audit-keycloak-events"] == 7


def test_realm_keeps_the_event_types_the_pull_reads() -> None:
    for name, rep in realm.realms().items():
        assert rep["eventsEnabled"] is True, name
        assert set(kce.PULLED_TYPES) <= set(rep["enabledEventTypes"]), name
        assert rep["eventsExpiration"] >= 86400, name


class PageSource(FakeSource):
    """Returns the given events as they are (malformed ones included), paged by ``first``."""

    def events(self, date_from_ms: int, first: int, max_results: int) -> list[dict[str, Any]]:
        self.calls.append((date_from_ms, first, max_results))
        hits = [e for e in self.all if not isinstance(e, dict) or not isinstance(e.get("time"), int)
                or e["time"] >= date_from_ms]
        return copy.deepcopy(hits[first:first + max_results])


def _malformed() -> list[Any]:
    base = RECORDED[2]
    t = base["time"]
    return [
        {**base, "id": "bad-time", "time": "yesterday"},
        {**base, "id": "bad-details", "time": t + 1, "details": ["not", "a", "dict"]},
        {**base, "id": "cred-ip", "time": t + 2, "ipAddress": "Basic 4711", "clientId": "eyJ" + "a" * 20 + ".b.c",
         "details": {"username": "Bearer " + "x" * 30}},
        {**base, "time": t + 3, "id": None},
        {**base, "id": "bad-user", "time": t + 4, "userId": {"nested": True}},
        "not-an-event",
        {**base, "id": "good-after", "time": t + 5},
    ]


def test_a_malformed_event_is_recorded_as_an_error_and_the_pull_moves_on(store) -> None:
    """Audit evasion: one bad Keycloak event must not stall the pull (and hide what follows)."""
    source = PageSource(_malformed())
    rep = kce.pull(store, source, realm=REALM, issuer=ISSUER, page_size=3)
    good = [r for r in store.query() if r["type"] != "audit.input_rejected"]
    errors = store.query(types=["audit.input_rejected"])
    ids = {r["event_id"] for r in good}
    assert kce.audit_event_id(REALM, "good-after") in ids  # the event after the bad ones is there
    assert kce.audit_event_id(REALM, "cred-ip") in ids  # credential-looking values: kept, hashed
    cred = next(r for r in good if r["event_id"] == kce.audit_event_id(REALM, "cred-ip"))
    assert cred["network_address"] == kce.ev.redaction_marker("Basic 4711") and "x" * 30 not in cred["body"]
    assert rep.errors >= 1 and len(errors) == rep.errors
    assert any("bad-time" in e["body"] for e in errors)
    assert all('"source":"keycloak"' in e["body"] for e in errors)
    before = store.count()
    again = kce.pull(store, source, realm=REALM, issuer=ISSUER, page_size=3)
    assert store.count() == before and again.recorded == 0  # errors are audited once, too
    assert store.verify().ok


def test_a_failing_user_lookup_does_not_stall_the_pull(store) -> None:
    class Flaky(FakeSource):
        def user(self, user_id: str) -> kce.KcUser | None:
            if user_id == NINA:
                raise RuntimeError("admin API 500")
            return super().user(user_id)

    rep = kce.pull(store, Flaky(RECORDED), realm=REALM, issuer=ISSUER)
    assert rep.recorded == 7  # Nina's events are recorded without the lookup's extra knowledge
    assert store.verify().ok


def test_an_unexpected_event_type_is_recorded_not_ignored(store) -> None:
    """The pull asks only for PULLED_TYPES: anything else coming back is recorded as an error."""
    odd = {**copy.deepcopy(RECORDED[1]), "time": RECORDED[0]["time"]}  # CODE_TO_TOKEN
    rep = kce.pull(store, PageSource([odd, RECORDED[0]]), realm=REALM, issuer=ISSUER)
    rows = store.query(types=["audit.input_rejected"])
    assert rep.errors == 1 and len(rows) == 1 and odd["id"] in rows[0]["body"]
    assert "unexpected Keycloak event type" in rows[0]["body"]
