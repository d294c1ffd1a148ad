"""The grant model (bridge/core/grants.py): one grant must hold the permissions AND cover the study.

The two holes of the merged model are the first tests: an unscoped role next to a scoped one keeps
its reach, and two scoped roles never lend each other permissions."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core import grants as g
from bridge.core.grants import StudyInfo

CARDIO = StudyInfo("o1", "1.2.3", "P1", "Cardiology", "General Hospital")
ONCO = StudyInfo("o2", "1.2.4", "P2", "Oncology", "General Hospital")
OTHER = StudyInfo("o3", "1.2.5", "P3", "Cardiology", "St Elsewhere")
NOW = 1_800_000_000


def claims(*items: Any) -> dict[str, Any]:
    return {"grants": list(items)}


def role(name: str, perms: list[str], **scope: list[str]) -> dict[str, Any]:
    return {"kind": "role", "role": name, "permissions": perms, "scope": scope}


def test_an_unscoped_role_keeps_its_reach_beside_a_scoped_one() -> None:
    gs = g.from_claims(claims(role("radiologist", ["view", "download"]),
                              role("resident", ["view", "delete"], departments=["Cardiology"])))
    assert g.allows(gs, ["download"], [ONCO]) is not None
    assert g.unrestricted(gs, ["view"])


def test_two_scoped_roles_do_not_lend_each_other_permissions() -> None:
    gs = g.from_claims(claims(role("resident-cardio", ["view", "delete"], departments=["Cardiology"]),
                              role("viewer-onco", ["view"], departments=["Oncology"])))
    assert g.allows(gs, ["delete"], [CARDIO]) is not None
    assert g.allows(gs, ["delete"], [ONCO]) is None  # merged, this was allowed
    assert g.visible(gs, ["view"], ONCO) and g.visible(gs, ["view"], CARDIO)
    assert not g.unrestricted(gs, ["view"])


def test_one_grant_must_cover_every_study_a_request_touches() -> None:
    gs = g.from_claims(claims(role("a", ["view"], departments=["Cardiology"]),
                              role("b", ["view"], departments=["Oncology"])))
    assert g.allows(gs, ["view"], [CARDIO, ONCO]) is None


def test_route_needing_several_permissions_needs_them_in_one_grant() -> None:
    gs = g.from_claims(claims(role("a", ["view", "modify"], departments=["Cardiology"]),
                              role("b", ["view", "download"], departments=["Cardiology"])))
    assert g.allows(gs, ["modify", "download"], [CARDIO]) is None
    assert g.allows(gs, ["modify"], [CARDIO]) is not None


def test_scope_keys_all_restrict_and_values_within_a_key_any() -> None:
    gs = g.from_claims(claims(role("a", ["view"], departments=["Cardiology", "Oncology"],
                                   institutions=["General Hospital"])))
    assert g.visible(gs, ["view"], CARDIO) and g.visible(gs, ["view"], ONCO)
    assert not g.visible(gs, ["view"], OTHER)


def test_study_and_patient_grants_are_the_same_mechanism() -> None:
    share = {"kind": "share", "role": None, "permissions": ["view"], "scope": {"studies": ["1.2.4"]},
             "exp": NOW + 60}
    btg = {"kind": "break-glass", "role": None, "permissions": ["view", "download"],
           "scope": {"patients": ["P3"]}, "exp": NOW + 3600}
    gs = g.from_claims(claims(share, btg), now=NOW)
    assert g.visible(gs, ["view"], ONCO) and not g.visible(gs, ["view"], CARDIO)
    assert g.allows(gs, ["download"], [OTHER]) is not None
    assert g.allows(gs, ["download"], [ONCO]) is None


def test_an_expired_grant_allows_nothing() -> None:
    share = {"kind": "share", "permissions": ["view"], "scope": {"studies": ["1.2.4"]}, "exp": NOW}
    assert g.from_claims(claims(share), now=NOW) == ()
    assert len(g.from_claims(claims(share), now=NOW - 1)) == 1


@pytest.mark.parametrize("bad", [
    role("x", ["view"], wards=["A"]),                                   # unknown scope key
    {"kind": "role", "permissions": ["view"], "scope": {"departments": "Cardiology"}},  # a string
    {"kind": "role", "permissions": ["view"], "scope": {"departments": [1]}},
    {"kind": "role", "permissions": ["view"], "scope": {"studies": [None]}},
    {"kind": "role", "permissions": ["view"], "scope": ["Cardiology"]},
    {"kind": "role", "permissions": ["view"], "scope": 0},
    {"kind": "role", "permissions": "view", "scope": {}},
    {"kind": "role", "permissions": [["view"]], "scope": {}},
    {"kind": "super", "permissions": ["view"], "scope": {}},
    {"kind": "role", "role": 7, "permissions": ["view"], "scope": {}},
    {"kind": "share", "permissions": ["view"], "scope": {}, "exp": "9999999999"},
    {"kind": "share", "permissions": ["view"], "scope": {}, "exp": 9e12},
    {"kind": "share", "permissions": ["view"], "scope": {}, "exp": True},
    "view", None, ["view"],
])
def test_a_malformed_grant_matches_nothing_never_everything(bad: Any) -> None:
    assert g.from_claims(claims(bad), now=NOW) == ()


@pytest.mark.parametrize("value", [None, {}, "grants", [[]], 0])
def test_no_grants_list_allows_nothing(value: Any) -> None:
    gs = g.from_claims({"grants": value} if value is not None else {}, now=NOW)
    assert g.allows(gs, ["view"], [CARDIO]) is None and not g.unrestricted(gs, ["view"])


def test_empty_scope_values_do_not_restrict_but_a_grant_without_permissions_holds_nothing() -> None:
    gs = g.from_claims(claims(role("a", ["view"], departments=[], institutions=[]),
                              role("b", [])), now=NOW)
    assert gs[0].unrestricted and g.unrestricted(gs, ["view"])
    assert g.allows(gs, ["delete"], [CARDIO]) is None


def test_an_unknown_study_is_covered_only_by_an_unrestricted_grant() -> None:
    scoped = g.from_claims(claims(role("a", ["view"], departments=["Cardiology"])))
    assert not g.visible(scoped, ["view"], None)
    assert g.visible(g.from_claims(claims(role("r", ["view"]))), ["view"], None)


def test_the_claim_form_round_trips() -> None:
    original = g.Grant(frozenset({"view"}), departments=frozenset({"Cardiology"}), kind="share",
                       role=None, exp=NOW + 5, studies=frozenset({"1.2.3"}))
    assert g.from_claims(claims(original.to_claim()), now=NOW) == (original,)
    assert original.describe() == "share (departments Cardiology; studies 1.2.3)"


def test_permissions_of_is_the_union_for_the_route_table() -> None:
    gs = g.from_claims(claims(role("a", ["view"]), role("b", ["delete"], departments=["X"])))
    assert g.permissions_of(gs) == {"view", "delete"}
