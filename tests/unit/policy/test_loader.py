"""Policy validation: every error names the file, the location and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.core.permissions import Permission
from bridge.policy.loader import PolicyError, load_policy, parse_policy

GOOD = """
version: 1
roles:
  reader: {description: r, permissions: [view, download], scopes: {departments: [Radiology]}}
  admin: {description: a, permissions: [admin]}
  auditor: {description: a, permissions: [audit-logs]}
rules:
  - id: r1
    group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}
    roles: [reader]
  - id: r2
    group: {id: "6F9619FF-8B86-D011-B42D-00C04FC964FF"}
    roles: [admin]
conflicts:
  - {roles: [admin, auditor], action: deny, reason: SoD}
"""


def test_example_policy_is_valid() -> None:
    pol = load_policy(Path(__file__).parents[3] / "examples" / "policy.yaml")
    assert "radiologist" in pol.roles and pol.rules


def test_good_policy_parses() -> None:
    pol = parse_policy(GOOD, "p.yaml")
    assert pol.roles["reader"].permissions == {Permission.VIEW, Permission.DOWNLOAD}
    assert pol.roles["reader"].departments == ("Radiology",)
    assert pol.rules[1].group.id == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert pol.conflicts[0].roles == {"admin", "auditor"}


def errors(text: str) -> dict[str, str]:
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.yaml")
    assert str(ei.value).startswith("p.yaml: ")
    return dict(ei.value.problems)


def test_bare_group_name_is_rejected() -> None:
    errs = errors(GOOD.replace('{dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}', "PACS-Users"))
    assert "ambiguous" in errs["rules[0].group"]


def test_unknown_permission_role_and_key_are_named() -> None:
    text = GOOD.replace("[view, download]", "[view, dowload]").replace("roles: [admin]\n", "roles: [admn]\n")
    text = text.replace("  - id: r1\n", "  - id: r1\n    grup: x\n")
    errs = errors(text)
    assert "dowload" in errs["roles.reader.permissions[1]"]
    assert "admn" in errs["rules[1].roles[0]"]
    assert "unknown key" in errs["rules[0].grup"]


def test_duplicate_rule_ids_and_both_dn_and_id() -> None:
    guid = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    text = GOOD.replace("id: r2", "id: r1").replace(f'{{id: "{guid}"}}', f'{{dn: "CN=a,DC=b", id: "{guid}"}}')
    errs = errors(text)
    assert "duplicate" in errs["rules[1].id"]
    assert "exactly one" in errs["rules[1].group"]


def test_bad_conflicts_and_yaml() -> None:
    errs = errors(GOOD.replace("[admin, auditor], action: deny", "[admin], action: block"))
    assert "two different roles" in errs["conflicts[0].roles"]
    assert "deny or warn" in errs["conflicts[0].action"]
    errs = errors("roles: [unclosed")
    assert any(k.startswith("line ") for k in errs)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as ei:
        load_policy(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(ei.value)
