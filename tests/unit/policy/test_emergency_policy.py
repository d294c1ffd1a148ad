"""The policy's break-glass parts: the ``emergency`` role capability and the ``emergency:`` section,
validated with located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.core.permissions import Permission
from bridge.policy.loader import PolicyError, load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "policy.yaml"

BASE = """
version: 1
roles:
  er:
    description: emergency physician
    permissions: [view]
    capabilities: {caps}
  rad:
    description: radiologist
    permissions: [view]
rules:
  - id: r1
    group: {{dn: "CN=ER,OU=Groups,DC=x,DC=y"}}
    roles: [er]
{emergency}
"""


def _parse(caps: str = "[emergency]", emergency: str = "emergency:\n  permissions: [view, download]\n") -> object:
    return parse_policy(BASE.format(caps=caps, emergency=emergency), source="p.yaml")


def test_the_demo_hospital_has_emergency_staff_and_permissions() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.emergency is not None and policy.emergency.lifetime_minutes == 60
    assert policy.emergency.effective_permissions == frozenset({Permission.VIEW, Permission.DOWNLOAD})
    assert {"clinician", "cardiologist"} <= policy.emergency_roles()
    assert "pacs-admin" not in policy.emergency_roles() and "auditor" not in policy.emergency_roles()


def test_a_valid_section() -> None:
    policy = _parse(emergency="emergency:\n  permissions: [view]\n  lifetime_minutes: 30\n")
    assert policy.emergency_roles() == frozenset({"er"})
    assert policy.emergency.lifetime_minutes == 30  # type: ignore[union-attr]


@pytest.mark.parametrize("caps, emergency, where, why", [
    ("[emergncy]", "emergency:\n  permissions: [view]\n", "roles.er.capabilities[0]", "unknown capability"),
    ("[emergency]", "", "roles.er.capabilities", "needs the top-level emergency"),
    ("[emergency]", "emergency:\n  permissions: [view, delete]\n", "emergency.permissions[1]", "cannot be granted"),
    ("[emergency]", "emergency:\n  permissions: [admin]\n", "emergency.permissions[0]", "cannot be granted"),
    ("[emergency]", "emergency:\n  permissions: [viewing]\n", "emergency.permissions[0]", "unknown permission"),
    ("[emergency]", "emergency:\n  permissions: []\n", "emergency.permissions", "non-empty"),
    ("[emergency]", "emergency:\n  permissions: [view]\n  lifetime_minutes: 0\n", "emergency.lifetime_minutes",
     "1 to 240"),
    ("[emergency]", "emergency:\n  permissions: [view]\n  lifetime_minutes: 600\n", "emergency.lifetime_minutes",
     "1 to 240"),
    ("[emergency]", "emergency:\n  permissions: [view]\n  lifetime_minutes: \"60\"\n",
     "emergency.lifetime_minutes", "whole number"),
    ("[emergency]", "emergency:\n  permissions: [view]\n  renew: true\n", "emergency.renew", "unknown key"),
    ("emergency", "emergency:\n  permissions: [view]\n", "roles.er.capabilities", "list"),
    ("[emergency]", "emergency: [view]\n", "emergency", "mapping"),
])
def test_errors_name_the_field(caps: str, emergency: str, where: str, why: str) -> None:
    with pytest.raises(PolicyError) as exc:
        _parse(caps, emergency)
    assert any(loc == where and why in reason for loc, reason in exc.value.problems), exc.value.problems
