"""Access reviews: the reviewers policy section, the flags, the campaign's decision rules (with
attempts to get around them), exceptions the sync applies, escalation.  SQLite store, directory
in memory, Keycloak as plain facts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bridge.audit.store import AuditStore
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.directory.model import DirectorySnapshot
from bridge.policy.loader import PolicyError, parse_policy
from bridge.review import campaign, facts
from bridge.review.build import KeycloakAccount, KeycloakFacts, build_review
from bridge.review.campaign import DecisionRefused, Reviewer
from bridge.review.run import compute
from bridge.store.db import engine, migrate, session
from bridge.store.models import ReviewException, RoleAssignment
from bridge.sync.runner import SyncRunner
from bridge.sync.targets.store import StoreTarget
from tests.unit.conftest import make_snapshot

ISS = "https://bridge.test"
POLICY_TEXT = """
roles:
  reader: {description: r, permissions: [view]}
  cardio: {description: c, permissions: [view, download], scopes: {departments: [Cardiology]}}
  admin: {description: a, permissions: [admin]}
  auditor: {description: au, permissions: [audit-logs]}
rules:
  - {id: readers, group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [reader]}
  - {id: cardio, group: {dn: "CN=Cardio,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [cardio]}
  - {id: admins, group: {dn: "CN=Admins,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [admin]}
  - {id: auditors, group: {dn: "CN=Auditors,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [auditor]}
conflicts:
  - {id: reader-audits, roles: [reader, auditor], action: warn}
reviewers:
  privacy_officer: {group: {dn: "CN=Privacy,OU=Int,OU=Groups,DC=h,DC=t"}}
  scopes:
    - {id: rad-head, group: {dn: "CN=RadHeads,OU=Int,OU=Groups,DC=h,DC=t"}, departments: [Radiology]}
    - {id: card-head, group: {dn: "CN=CardHeads,OU=Int,OU=Groups,DC=h,DC=t"}, departments: [Cardiology],
       roles: [cardio]}
"""
POLICY = parse_policy(POLICY_TEXT)
DEPTS = {"alice": "Radiology", "bob": "Radiology", "carl": "Cardiology", "dora": "Radiology", "hank": "Radiology",
         "cora": "Cardiology", "pat": "Compliance", "old": "Radiology", "ivan": "IT"}


def snapshot() -> DirectorySnapshot:
    snap = make_snapshot({
        "alice": ("Readers",), "bob": ("Readers", "Auditors"), "carl": ("Cardio",), "dora": ("Readers", "RadHeads"),
        "hank": ("Readers", "RadHeads"), "cora": ("Cardio", "CardHeads"), "pat": ("Privacy",), "old": ("Readers",),
        "ivan": ("Admins",)}, disabled={"old"})
    users = {k: dataclasses.replace(u, department=DEPTS[u.username]) for k, u in snap.users.items()}
    return DirectorySnapshot(users, snap.groups, snap.memberships)


@pytest.fixture
def eng(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    return engine(url)


def access(store: AuditStore, who: str, when: dt.datetime, *, departments: list[str] | None = None,
           kind: AuditEventType = AuditEventType.STUDY_ACCESSED, purpose: list[str] | None = None) -> None:
    details: dict[str, Any] = {"pacs": "orthanc", "permission": "view", "requests": 1}
    if departments is not None:
        details["departments"] = departments
    if purpose:
        details["purpose_of_use"] = purpose
    store.append(ev.AuditEvent(kind, None, ev.Actor(user_id=f"u-{who}@{ISS}", username=who),
                               (ev.study("1.2.3"), ev.patient("P1")), details=details, time=when))


def test_reviewers_section_errors_are_located() -> None:
    bad = POLICY_TEXT.split("reviewers:")[0] + """
reviewers:
  privacy_officer: {group: "Privacy"}
  scopes:
    - {id: privacy-officer, group: {dn: "CN=X,OU=Int,DC=h,DC=t"}, departments: [A]}
    - {id: a, group: {dn: "CN=X,OU=Int,DC=h,DC=t"}, roles: [radiologst]}
    - {id: a, departments: [B], colour: red}
    - {id: c, group: {dn: "CN=Y,OU=Int,DC=h,DC=t"}}
"""
    with pytest.raises(PolicyError) as err:
        parse_policy(bad, source="p.yaml")
    locs = {loc for loc, _ in err.value.problems}
    assert {"reviewers.privacy_officer.group", "reviewers.scopes[0].id", "reviewers.scopes[1].roles[0]",
            "reviewers.scopes[2].id", "reviewers.scopes[2].group", "reviewers.scopes[2].colour",
            "reviewers.scopes[3]"} <= locs, locs
    assert "p.yaml" in str(err.value)


def test_examples_policy_has_reviewers_for_every_department_head() -> None:
    from bridge.policy.loader import load_policy

    policy = load_policy(Path(__file__).parents[3] / "examples" / "policy.yaml")
    assert policy.reviewers is not None
    assert {s.id for s in policy.reviewers.scopes} >= {"radiology-head", "cardiology-head", "emergency-head"}


def test_flags(eng: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    store = AuditStore(eng)
    access(store, "alice", now - dt.timedelta(days=2))
    access(store, "carl", now - dt.timedelta(days=1), departments=["Cardiology"])
    access(store, "carl", now - dt.timedelta(days=1), departments=["Oncology"])  # outside his only role's scope
    access(store, "carl", now - dt.timedelta(days=1), departments=["Neuro"], purpose=["BTG"])  # not counted
    access(store, "dora", now - dt.timedelta(days=400))
    store.append(ev.AuditEvent(AuditEventType.ROLE_ASSIGNED, None, ev.Actor(user_id="kc@x", username="console.admin"),
                               (ev.user("u-alice", "alice"), ev.role("admin")),
                               details={"source": "keycloak-admin", "by_bridge_sync": False}))
    with session(eng) as s:
        s.add(RoleAssignment(subject_id="u-gone", username="gone", role="reader", source_group_dn="x", managed=True))
    kc = KeycloakFacts(
        accounts=[KeycloakAccount("k1", "alice", "u-alice", True), KeycloakAccount("k2", "local.admin", None, True),
                  KeycloakAccount("k3", "old", "u-old", False)],
        role_members={"admin": {"u-alice", "u-ivan"}, "reader": {"keycloak:k2"}})
    review = compute(eng, snapshot(), POLICY, issuer=ISS, keycloak=kc, dormant_days=90, now=now)
    u = review.users
    assert "dormant" not in u["u-alice"].flags and "dormant" in u["u-dora"].flags
    assert "dormant" in u["u-hank"].flags  # never seen at all
    assert u["u-alice"].last_access is not None
    assert {"hand-assigned", "privileged"} <= u["u-alice"].flags
    assert {i.role: i.source for i in u["u-alice"].items} == {"reader": "policy", "admin": "keycloak-console"}
    assert u["u-alice"].evidence["hand-assigned"]["console_changes"][0]["admin"] == "console.admin"
    assert "sod" in u["u-bob"].flags and u["u-bob"].evidence["sod"][0]["action"] == "warn"
    assert "privileged" in u["u-ivan"].flags and "hand-assigned" not in u["u-ivan"].flags
    assert "disabled" in u["u-old"].flags and not u["u-old"].items
    assert "orphan" in u["keycloak:k2"].flags and "orphan" in u["u-gone"].flags
    assert u["u-carl"].evidence["out-of-scope"]["count"] == 1
    assert u["u-carl"].evidence["out-of-scope"]["departments"] == ["Oncology"]
    assert "out-of-scope" not in u["u-alice"].flags  # an unscoped role: nothing is outside


def test_routing_and_nobody_reviews_themselves() -> None:
    review = build_review(snapshot(), POLICY, assignments=[], activity={})
    queue = {(i.username, i.role): i.queue for i in review.items}
    assert queue[("alice", "reader")] == "rad-head"
    assert queue[("carl", "cardio")] == "card-head"
    # dora and hank are both Radiology heads: each one's item goes to the other, never to themselves...
    assert queue[("dora", "reader")] == "rad-head"
    # ...but cora is the only Cardiology head: her own item goes to the privacy officer
    assert queue[("cora", "cardio")] == "privacy-officer"
    assert queue[("ivan", "admin")] == "privacy-officer"  # no scope covers IT
    assert {n for _, n in review.reviewers["rad-head"]} == {"dora", "hank"}


def start(eng: Any, now: dt.datetime | None = None, deadline_days: int = 14) -> tuple[int, AuditStore]:
    store = AuditStore(eng)
    review = compute(eng, snapshot(), POLICY, issuer=ISS, keycloak=None, dormant_days=90)
    return campaign.start(eng, review, started_by="test", deadline_days=deadline_days, audit=store, now=now), store


def item_of(eng: Any, cid: int, username: str, role: str) -> Any:
    return next(i for i in campaign.items_of(eng, cid) if i.username == username and i.role == role)


def decisions(store: AuditStore) -> list[dict[str, Any]]:
    return [{**json.loads(r["body"]), "outcome": r["outcome"]}
            for r in store.query(types=[AuditEventType.REVIEW_DECIDED.value])]


def test_decision_rules_and_attacks(eng: Any) -> None:
    cid, store = start(eng)
    alice_reader = item_of(eng, cid, "alice", "reader")
    carl_cardio = item_of(eng, cid, "carl", "cardio")
    hank_reader = item_of(eng, cid, "hank", "reader")
    dora = Reviewer("u-dora", "dora")
    # a reviewer deciding another department's item
    with pytest.raises(DecisionRefused) as e:
        campaign.decide(eng, carl_cardio.id, "revoke", "no", dora, audit=store)
    assert e.value.status == 403
    # a non-reviewer
    with pytest.raises(DecisionRefused):
        campaign.decide(eng, alice_reader.id, "revoke", "x", Reviewer("u-alice", "alice"), audit=store)
    # the same subject id in another case is still the same non-reviewer / still oneself
    with pytest.raises(DecisionRefused):
        campaign.decide(eng, alice_reader.id, "keep", "x", Reviewer("U-ALICE", "alice"), audit=store)
    # a reviewer deciding their own item (hank's item is in rad-head, hank is in rad-head)
    with pytest.raises(DecisionRefused) as e:
        campaign.decide(eng, hank_reader.id, "keep", "fine", Reviewer("u-hank", "hank"), audit=store)
    assert "own access" in str(e.value)
    # bad values
    for decision, comment in (("approve", "x"), ("Keep", "x"), ("revoke", "   "), ("keep", "x" * 2001)):
        with pytest.raises(DecisionRefused) as e:
            campaign.decide(eng, alice_reader.id, decision, comment, dora, audit=store)
        assert e.value.status == 400
    with pytest.raises(DecisionRefused) as e:
        campaign.decide(eng, 999999, "keep", "x", dora, audit=store)
    assert e.value.status == 404
    # the real decision, then a second one (replay or a second reviewer) is refused
    campaign.decide(eng, alice_reader.id, "revoke", "moved to another hospital", dora, audit=store)
    with pytest.raises(DecisionRefused) as e:
        campaign.decide(eng, alice_reader.id, "keep", "changed my mind", Reviewer("u-hank", "hank"), audit=store)
    assert e.value.status == 409
    events = decisions(store)
    refused = [e for e in events if "refused" in e["details"]]
    assert len(refused) == 10 and all(e["outcome"] == 4 for e in refused)
    done = [e for e in events if "refused" not in e["details"]]
    assert done[0]["details"]["decision"] == "revoke" and done[0]["details"]["comment"] == "moved to another hospital"


def test_revoke_is_applied_by_every_sync_until_a_later_keep(eng: Any) -> None:
    class Reader:
        def read(self, previous: Any = None, *, full: bool = True) -> DirectorySnapshot:
            return snapshot()

    runner = SyncRunner(Reader(), POLICY, [StoreTarget(eng)], eng)
    assert runner.run(apply=True).status == "ok"
    cid, store = start(eng)
    item = item_of(eng, cid, "alice", "reader")
    campaign.decide(eng, item.id, "revoke", "left radiology", Reviewer("u-dora", "dora"), audit=store)
    report = runner.run(apply=False)
    removal = [c for t in report.plan.targets for c in t.removals if c.username == "alice"]
    assert removal and removal[0].reason.startswith("review-revoked: access review")
    assert "left radiology" in removal[0].reason
    assert any("review exception: alice does not get reader" in w for w in report.plan.warnings)
    runner.run(apply=True)
    with session(eng) as s:
        held = set(s.scalars(select(RoleAssignment.role).where(RoleAssignment.subject_id == "u-alice")))
    assert held == set()
    again = runner.run(apply=False)  # still withheld, still explained on the next run
    assert again.plan.empty and any("alice" in w for w in again.plan.warnings)
    # the next review lists the withheld assignment again; a keep ends the exception
    cid2, store = start(eng)
    item2 = item_of(eng, cid2, "alice", "reader")
    assert item2.source == "excepted"
    campaign.decide(eng, item2.id, "keep", "back in radiology", Reviewer("u-hank", "hank"), audit=store)
    runner.run(apply=True)
    with session(eng) as s:
        assert s.scalars(select(RoleAssignment.role).where(RoleAssignment.subject_id == "u-alice")).all() == ["reader"]
        assert s.scalars(select(ReviewException.ended_at)).all()[0] is not None


def test_an_exception_with_a_date_ends_by_itself(eng: Any) -> None:
    from bridge.review import exceptions

    cid, store = start(eng)
    item = item_of(eng, cid, "alice", "reader")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with pytest.raises(DecisionRefused):
        campaign.decide(eng, item.id, "revoke", "x", Reviewer("u-dora", "dora"), audit=store,
                        until=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    campaign.decide(eng, item.id, "revoke", "x", Reviewer("u-dora", "dora"), audit=store, until=until)
    assert exceptions.by_key(eng)
    assert not exceptions.by_key(eng, until + dt.timedelta(seconds=1))


def test_escalation_past_the_deadline(eng: Any) -> None:
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    cid, store = start(eng, now=t0, deadline_days=14)
    item = item_of(eng, cid, "alice", "reader")
    pat = Reviewer("u-pat", "pat")
    with pytest.raises(DecisionRefused):  # not escalated yet: the privacy officer cannot decide it
        campaign.decide(eng, item.id, "keep", "ok", pat, audit=store)
    decided = item_of(eng, cid, "bob", "reader")
    campaign.decide(eng, decided.id, "keep", "ok", Reviewer("u-dora", "dora"), audit=store)
    sent: list[dict[str, Any]] = []
    assert campaign.escalate(eng, audit=store, notify=sent.append, now=t0 + dt.timedelta(days=13)) == 0
    n = campaign.escalate(eng, audit=store, notify=sent.append)
    total = len(campaign.items_of(eng, cid))
    assert n == total - 1 and sent[0]["count"] == n and sent[0]["escalated_to"] == "privacy-officer"
    assert campaign.escalate(eng, audit=store, notify=sent.append) == 0  # once
    rows = store.query(types=[AuditEventType.REVIEW_ESCALATED.value])
    assert len(rows) == 1 and json.loads(rows[0]["body"])["details"]["count"] == n
    assert item.id in {i.id for i in campaign.visible_items(eng, cid, "u-pat")}
    campaign.decide(eng, item.id, "keep", "checked with the department", pat, audit=store)


def test_escalation_webhook_failure_is_recorded(eng: Any) -> None:
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    _, store = start(eng, now=t0, deadline_days=1)

    def broken(payload: dict[str, Any]) -> None:
        raise OSError("connection refused")

    assert campaign.escalate(eng, audit=store, notify=broken) > 0
    rows = [json.loads(r["body"]) for r in store.query(types=[AuditEventType.REVIEW_ESCALATED.value])]
    assert any("webhook_error" in r["details"] for r in rows)


def test_activity_is_one_aggregate_per_user(eng: Any) -> None:
    store = AuditStore(eng)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    access(store, "alice", t)
    access(store, "alice", t + dt.timedelta(days=1))
    access(store, "alice", t + dt.timedelta(days=5), kind=AuditEventType.ACCESS_DENIED)  # refused: not a use
    store.append(ev.AuditEvent(AuditEventType.LOGIN_SUCCESS, None, ev.Actor(user_id=f"u-alice@{ISS}"), time=t))
    a = facts.activity(eng)["u-alice"]
    assert a.last_access.startswith("2026-01-02") and a.last_login.startswith("2026-01-01")


def test_serve_schedules_a_monthly_campaign_and_the_escalation(tmp_path: Path) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from bridge.config import load_config
    from bridge.review import jobs

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT)
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(f"sync: {{policy_file: {policy}}}\nstore: {{url: 'sqlite:///{tmp_path}/b.db'}}\n")
    settings = load_config(cfg)
    sched = BackgroundScheduler()
    assert set(jobs.schedule(sched, settings)) == {"review-campaign", "review-escalation"}
    trigger = sched.get_job("review-campaign").trigger
    assert "day='1'" in str(trigger) and "hour='6'" in str(trigger)


@pytest.mark.parametrize(("body", "key"), [("schedule: 'every month'", "review.schedule"),
                                           ("webhook_url: 'http://hook.test/x'", "review.webhook_url")])
def test_the_review_section_is_validated(tmp_path: Path, body: str, key: str) -> None:
    from bridge.config import ConfigError, load_config

    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(f"review: {{{body}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert key in str(err.value)


def test_webhook_is_off_without_a_url_and_signs_with_the_secret(tmp_path: Path) -> None:
    import hashlib
    import hmac

    from bridge.config import load_config
    from bridge.review.notify import sign, webhook

    assert webhook(load_config()) is None
    body = b'{"count": 1}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_a_scim_pacs_account_of_someone_the_directory_does_not_know_is_an_orphan() -> None:
    known = next(iter(snapshot().users))
    review = build_review(snapshot(), POLICY, assignments=[], activity={},
                          target_accounts={"scim": {"u-left-2019": "old.olga", known: "still.here"}})
    assert "orphan" in review.users["u-left-2019"].flags
    assert review.users["u-left-2019"].evidence["orphan"][0]["where"] == "scim"
    assert "orphan" not in (review.users[known].flags if known in review.users else set())


def test_the_scim_client_pages_and_keys_accounts_by_external_id() -> None:
    import httpx

    from bridge.scim_client import ScimClient, ScimError

    users = [{"id": str(i), "externalId": f"GUID-{i}", "userName": f"u{i}"} for i in range(5)] + [{"id": "x"}]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0k"
        start, count = int(request.url.params["startIndex"]), 2
        page = users[start - 1:start - 1 + count]
        return httpx.Response(200, json={"totalResults": len(users), "Resources": page})

    client = ScimClient("https://scim.test/v2", "t0k")
    client.http = httpx.Client(base_url="https://scim.test/v2", transport=httpx.MockTransport(handler),
                               headers=client.http.headers)
    assert client.accounts() == {f"guid-{i}": f"u{i}" for i in range(5)}
    failing = ScimClient("https://scim.test/v2", "t0k")
    failing.http = httpx.Client(base_url="https://scim.test/v2",
                                transport=httpx.MockTransport(lambda r: httpx.Response(403, text="no")))
    with pytest.raises(ScimError, match="HTTP 403"):
        failing.accounts()
