"""Pure parts of the directory reader: nested group closure, DN normalisation, snapshot immutability."""

from __future__ import annotations

import pytest

from bridge.directory.model import DirectoryGroup, DirectorySnapshot, DirectoryUser, normalize_dn
from bridge.directory.nesting import effective_memberships


def test_nested_groups_give_outer_membership() -> None:
    eff, cycles = effective_memberships(
        {"inner": {"u1"}, "outer": {"u2"}, "top": set()},
        {"outer": {"inner"}, "top": {"outer"}},
    )
    assert eff["u1"] == {"inner", "outer", "top"}
    assert eff["u2"] == {"outer", "top"}
    assert cycles == []


def test_cycle_terminates_and_is_reported_once() -> None:
    eff, cycles = effective_memberships(
        {"a": {"u"}, "b": set(), "c": set()}, {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    )
    assert eff["u"] == {"a", "b", "c"}
    assert len(cycles) == 1 and set(cycles[0]) == {"a", "b"}


def test_self_membership_cycle() -> None:
    eff, cycles = effective_memberships({"a": {"u"}}, {"a": {"a"}})
    assert eff["u"] == {"a"}
    assert cycles


def test_normalize_dn_ignores_case_and_blanks_keeps_escapes() -> None:
    assert normalize_dn("CN=Radiology, OU=Groups,DC=hospital,DC=test") == normalize_dn(
        "cn=radiology,ou=groups,dc=hospital,dc=test"
    )
    assert normalize_dn(r"CN=Smith\, John,OU=Staff") == r"cn=smith\, john,ou=staff"


def test_snapshot_is_immutable_and_looks_up_by_dn() -> None:
    snap = DirectorySnapshot(
        {"1": DirectoryUser("1", "CN=a,OU=Staff", "a")},
        {"g": DirectoryGroup("g", "CN=G,OU=Groups", "G")},
        {"1": {"g"}},
    )
    with pytest.raises(TypeError):
        snap.users["2"] = DirectoryUser("2", "x", "b")  # type: ignore[index]
    assert snap.group_by_dn("cn=g,ou=groups").id == "g"
    assert snap.user_by_username("A").id == "1"
    assert snap.groups_of("1") == frozenset({"g"})
