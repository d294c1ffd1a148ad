"""The PACS token claims (RFC 9068 + IHE IUA)."""

from __future__ import annotations

import pytest

from bridge.core.permissions import Permission
from bridge.tokens.claims import Grant, Subject, TokenSettings, build, grant_from_roles, scopes_supported

SETTINGS = TokenSettings(
    issuer="https://bridge.test", audience="pacs", lifetime_seconds=300, max_lifetime_seconds=900
)
SUBJECT = Subject(
    id="3f2a-guid",
    username="rad.alice",
    name="Alice Rad",
    organization="Hospital",
    auth_time=1000,
    acr="mfa",
    amr=("pwd", "otp"),
)
ROLE_MAP = {"radiologist": ["view", "download"], "technologist": ["upload", "view"]}


def test_claims_are_complete() -> None:
    grant = grant_from_roles([("radiologist", {"departments": ["radiology"]}), ("unknown-role", None)], ROLE_MAP)
    c = build(SETTINGS, SUBJECT, grant, "viewer", now=2000, jti="j1")
    for name in (
        "iss",
        "sub",
        "aud",
        "client_id",
        "exp",
        "iat",
        "nbf",
        "jti",
        "scope",
        "auth_time",
        "acr",
        "amr",
    ):
        assert name in c, name
    assert c["sub"] == "3f2a-guid" and c["aud"] == "pacs" and c["iss"] == "https://bridge.test"
    assert c["exp"] == 2300 and c["iat"] == c["nbf"] == 2000
    assert c["roles"] == ["radiologist"]
    assert c["permissions"] == ["download", "view"]
    assert c["scope"] == "pacs:download pacs:view"
    assert c["grants"] == [{"kind": "role", "role": "radiologist", "permissions": ["download", "view"],
                            "scope": {"departments": ["radiology"]}}]
    assert "scopes" not in c  # format 1's merged scope is gone
    iua = c["extensions"]["ihe_iua"]
    assert iua["subject_name"] == "Alice Rad" and iua["subject_organization"] == "Hospital"
    assert iua["subject_role"][0]["code"] == "radiologist"
    assert iua["purpose_of_use"][0]["code"] == "TREAT"


def test_lifetime_capped_by_maximum() -> None:
    c = build(SETTINGS, SUBJECT, Grant(), "viewer", now=0, requested_lifetime=10_000)
    assert c["exp"] == 900


def test_implied_permissions_added() -> None:
    grant = grant_from_roles(["r"], {"r": ["send"]})
    assert grant.permissions == {Permission.SEND, Permission.VIEW}


def test_scope_request_narrows_never_widens() -> None:
    grant = grant_from_roles(["radiologist"], ROLE_MAP).narrowed("pacs:view pacs:delete")
    assert grant.permissions == {Permission.VIEW}


def test_no_subject_id_and_bad_purpose_refused() -> None:
    with pytest.raises(ValueError, match=r"subject\.id"):
        build(SETTINGS, Subject(id=""), Grant(), "v")
    with pytest.raises(ValueError, match="purpose_of_use"):
        build(SETTINGS, SUBJECT, Grant(), "v", purpose_of_use="BTG")


def test_scopes_supported_cover_vocabulary() -> None:
    assert len(scopes_supported()) == len(Permission)


def test_one_grant_per_role_never_merged() -> None:
    grant = grant_from_roles([("radiologist", {}), ("technologist", {"departments": ["CT"]})], ROLE_MAP)
    c = build(SETTINGS, SUBJECT, grant, "viewer", now=2000, jti="j1")
    assert c["roles"] == ["radiologist", "technologist"]
    assert c["permissions"] == ["download", "upload", "view"]  # the union: display and OAuth scope only
    assert c["grants"] == [
        {"kind": "role", "role": "radiologist", "permissions": ["download", "view"], "scope": {}},
        {"kind": "role", "role": "technologist", "permissions": ["upload", "view"], "scope": {"departments": ["CT"]}},
    ]


def test_narrowing_narrows_each_grant_and_drops_empty_ones() -> None:
    grant = grant_from_roles([("radiologist", {}), ("technologist", {"departments": ["CT"]})], ROLE_MAP)
    narrowed = grant.narrowed("pacs:download")
    assert [(g.role, sorted(g.permissions)) for g in narrowed.grants] == [("radiologist", ["download"])]
    assert narrowed.roles == grant.roles


@pytest.mark.parametrize("scope", [{"modalities": ["CT"]}, {"departments": "CT"}, {"departments": [1]}])
def test_a_row_scope_the_pacs_cannot_apply_allows_nothing(scope: dict) -> None:
    """An assignment row with an unknown scope kind (or a malformed value) becomes no grant, never an
    unscoped one."""
    grant = grant_from_roles([("technologist", scope)], ROLE_MAP)
    assert grant.grants == () and grant.permissions == frozenset()
