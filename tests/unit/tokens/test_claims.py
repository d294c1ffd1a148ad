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
    grant = grant_from_roles(["radiologist", "unknown-role"], ROLE_MAP, departments=["radiology"])
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
    assert c["scopes"] == {"departments": ["radiology"], "institutions": []}
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
