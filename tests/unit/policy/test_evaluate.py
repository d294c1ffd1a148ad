"""Policy evaluation: grants with their rule and group, nesting, SoD, disabled users."""

from __future__ import annotations

from bridge.policy.evaluate import evaluate
from bridge.policy.loader import parse_policy

POLICY = """
roles:
  reader: {description: r, permissions: [view]}
  admin: {description: a, permissions: [admin]}
  auditor: {description: a, permissions: [audit-logs]}
  referrer: {description: x, permissions: [view]}
rules:
  - {id: readers, group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [reader]}
  - {id: admins, group: {dn: "cn=admins,ou=int,ou=groups,dc=h,dc=t"}, roles: [admin]}
  - {id: auditors, group: {dn: "CN=Auditors,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [auditor]}
  - {id: ext, group: {dn: "CN=PACS-Users,OU=External,OU=Groups,DC=h,DC=t"}, roles: [referrer]}
  - {id: stale, group: {dn: "CN=Gone,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [reader]}
conflicts:
  - {id: sod, roles: [admin, auditor], action: deny}
  - {id: soft, roles: [reader, auditor], action: warn}
"""


def test_grants_name_rule_and_group(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"ann": ("Readers", "Admins")}, extra_groups=("Auditors", "ext/PACS-Users"))
    ev = evaluate(snap, parse_policy(POLICY))
    ent = ev.entitlements["u-ann"]
    assert ent.roles == {"reader", "admin"}
    assert [(g.role, g.rule_id) for g in ent.grants] == [("admin", "admins"), ("reader", "readers")]
    assert ent.grants_for("reader")[0].group_dn.startswith("CN=Readers")
    assert [r.id for r in ev.unresolved_rules] == ["stale"]


def test_same_named_group_elsewhere_grants_nothing(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"int": ("PACS-Users",), "ext": ("ext/PACS-Users",)})
    ev = evaluate(snap, parse_policy(POLICY))
    assert ev.entitlements["u-int"].roles == frozenset()
    assert ev.entitlements["u-ext"].roles == {"referrer"}


def test_sod_deny_removes_both_warn_keeps(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"bob": ("Admins", "Auditors", "Readers")})
    ent = evaluate(snap, parse_policy(POLICY)).entitlements["u-bob"]
    assert ent.roles == {"reader"}
    assert ent.denied == {"admin", "auditor"}
    assert {h.conflict.id for h in ent.conflicts} == {"sod", "soft"}  # both reported
    snap = snapshot_factory({"carl": ("Auditors", "Readers")})
    ent = evaluate(snap, parse_policy(POLICY)).entitlements["u-carl"]
    assert ent.roles == {"reader", "auditor"} and ent.conflicts[0].conflict.id == "soft"


def test_disabled_user_gets_nothing(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"old": ("Readers",)}, disabled={"old"})
    assert evaluate(snap, parse_policy(POLICY)).entitlements["u-old"].roles == frozenset()


SCOPED = """
roles:
  clinician: {description: c, permissions: [view]}
  cardiologist: {description: c, permissions: [download], scopes: {departments: [Cardiology]}}
rules:
  - {id: clin, group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [clinician]}
  - {id: card, group: {dn: "CN=Admins,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [cardiologist]}
"""


def test_each_role_becomes_its_own_pacs_grant_and_explain_answers_per_grant(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    from bridge.policy.cli import _answer
    from bridge.policy.evaluate import pacs_grants

    policy = parse_policy(SCOPED)
    snap = snapshot_factory({"ines": ("Readers", "Admins"), "liam": ("Admins",)})
    ev = evaluate(snap, policy)
    ines = pacs_grants(ev.entitlements["u-ines"], policy)
    assert [g.describe() for g in ines] == ["role cardiologist (departments Cardiology)", "role clinician (everywhere)"]
    assert sorted(ines[0].permissions) == ["download", "view"]  # expanded, as the token service issues it
    assert _answer(ines, "view", "Oncology", "") == {"allowed": True, "grant": "role clinician (everywhere)"}
    assert _answer(ines, "download", "Cardiology", "")["grant"] == "role cardiologist (departments Cardiology)"
    no = _answer(ines, "download", "Oncology", "")
    assert not no["allowed"] and "does not cover department Oncology" in no["reason"]  # never lent
    liam = pacs_grants(ev.entitlements["u-liam"], policy)
    assert _answer(liam, "view", "Oncology", "")["allowed"] is False
    assert _answer(liam, "delete", "Cardiology", "") == {"allowed": False, "reason": "no grant holds delete"}
