"""Desired state, plan and safety gate: pure functions, no server."""

from __future__ import annotations

from bridge.policy.loader import parse_policy
from bridge.sync.desired import desired_state
from bridge.sync.model import ActualState
from bridge.sync.plan import make_plan, plan_to_dict
from bridge.sync.safety import Thresholds, check

POLICY = parse_policy("""
roles:
  reader: {description: r, permissions: [view]}
  admin: {description: a, permissions: [admin]}
  auditor: {description: a, permissions: [audit-logs]}
rules:
  - {id: readers, group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [reader]}
  - {id: admins, group: {dn: "CN=Admins,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [admin]}
  - {id: auditors, group: {dn: "CN=Auditors,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [auditor]}
conflicts:
  - {roles: [admin, auditor], action: deny}
""")


def actual(*pairs: tuple[str, str], roles: tuple[str, ...] = ("reader", "admin", "auditor"),
           foreign: tuple[str, ...] = ()) -> ActualState:
    return ActualState(frozenset(roles), frozenset(pairs), {}, frozenset(foreign))


def test_desired_state_uses_policy_and_sod(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"ann": ("Readers",), "bob": ("Admins", "Auditors")})
    d = desired_state(snap, POLICY)
    assert set(d.assignments) == {("u-ann", "reader")}
    assert d.assignments[("u-ann", "reader")].rule_id == "readers"
    assert any("SoD" in w and "bob" in w for w in d.warnings)


def test_joiner_mover_leaver_plan(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"new": ("Readers",), "mover": ("Admins",), "old": ("Readers",)}, disabled={"old"})
    d = desired_state(snap, POLICY)
    act = actual(("u-mover", "reader"), ("u-old", "reader"), ("u-gone", "reader"))
    plan = make_plan(d, {"kc": act}, snap.summary())
    t = plan.targets[0]
    assert {(c.username, c.role) for c in t.adds} == {("new", "reader"), ("mover", "admin")}
    assert {(c.user_id, c.reason) for c in t.removals} == {
        ("u-mover", "no-longer-entitled"), ("u-old", "left-disabled"), ("u-gone", "left-gone")}
    assert {(lv.user_id, lv.reason) for lv in t.leavers} == {("u-old", "disabled"), ("u-gone", "gone")}
    assert plan_to_dict(plan)["counts"] == {"role_creations": 0, "adds": 2, "removals": 3, "leavers": 2}


def test_in_sync_plan_is_empty_and_missing_roles_are_created(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"ann": ("Readers",)})
    d = desired_state(snap, POLICY)
    assert make_plan(d, {"kc": actual(("u-ann", "reader"))}, {}).empty
    plan = make_plan(d, {"kc": actual(roles=())}, {})
    assert plan.targets[0].role_creations == ("admin", "auditor", "reader")


def test_hand_made_role_is_never_touched(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    snap = snapshot_factory({"ann": ("Readers",)})
    plan = make_plan(desired_state(snap, POLICY), {"kc": actual(roles=("admin", "auditor"), foreign=("reader",))}, {})
    t = plan.targets[0]
    assert t.adds == () and t.role_creations == () and t.skipped_roles == ("reader",)
    assert any("not created by the bridge" in w for w in plan.warnings)


def _removals_plan(snapshot_factory, keep: int, drop: int):  # type: ignore[no-untyped-def]
    users = {f"k{i}": ("Readers",) for i in range(keep)}
    snap = snapshot_factory(users)
    pairs = [(f"u-k{i}", "reader") for i in range(keep)] + [(f"u-x{i}", "reader") for i in range(drop)]
    return make_plan(desired_state(snap, POLICY), {"kc": actual(*pairs)}, snap.summary())


def test_threshold_absolute_percent_and_allow(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    small = _removals_plan(snapshot_factory, 95, 5)
    assert check(small, Thresholds(500, 10)).ok
    pct = _removals_plan(snapshot_factory, 80, 20)
    gate = check(pct, Thresholds(500, 10))
    assert not gate.ok and "20.0%" in gate.reasons[0]
    absolute = _removals_plan(snapshot_factory, 1000, 11)
    assert not check(absolute, Thresholds(10, 50)).ok
    assert check(absolute, Thresholds(10, 50), allow_deletes=True).ok


def test_directory_shrink_stops(snapshot_factory) -> None:  # type: ignore[no-untyped-def]
    plan = _removals_plan(snapshot_factory, 50, 0)
    assert not check(plan, Thresholds(500, 10), previous_users=100).ok
    assert check(plan, Thresholds(500, 10), previous_users=52).ok
