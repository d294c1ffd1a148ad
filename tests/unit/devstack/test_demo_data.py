"""The demo directory is consistent, and holds the edge cases the sync and policy tests rely on."""

from __future__ import annotations

import copy

import pyotp
import pytest

from pacs_devstack import demo_data


@pytest.fixture(scope="module")
def data() -> dict:
    return demo_data.load()


def test_around_forty_users_with_unique_usernames(data: dict) -> None:
    names = [u["username"] for u in data["users"]]
    assert 35 <= len(names) <= 45
    assert len(set(names)) == len(names)


def test_every_user_has_the_documented_fields(data: dict) -> None:
    for u in data["users"]:
        assert set(demo_data.USER_FIELDS) <= set(u), u["username"]
        assert u["ou"].startswith("Staff/"), u["username"]
        assert demo_data.password_complex(u["password"]), u["username"]
        pyotp.TOTP(u["totp_secret"]).now()  # valid base32


def test_departments_cover_the_hospital(data: dict) -> None:
    ous = {u["ou"] for u in data["users"]}
    for dept in ("Radiology", "Cardiology", "Emergency", "Technologists", "Referring", "IT", "Compliance"):
        assert f"Staff/{dept}" in ous


def test_group_members_exist_and_keys_are_unique(data: dict) -> None:
    users = {u["username"] for u in data["users"]}
    keys = [g["key"] for g in data["groups"]]
    assert len(set(keys)) == len(keys)
    for g in data["groups"]:
        assert set(g["members"]["users"]) <= users, g["key"]
        assert set(g["members"]["groups"]) <= set(keys), g["key"]
        assert g["members"]["users"] or g["members"]["groups"], g["key"]


def test_special_cases_present(data: dict) -> None:
    special = data["special_cases"]
    assert demo_data.user(special["disabled"])["disabled"] is True
    assert [u["username"] for u in data["users"] if u["disabled"]] == [special["disabled"]]
    nested = special["nested"]
    assert nested["inner"] in demo_data.group(nested["outer"])["members"]["groups"]
    conflict = special["conflicting_groups"]
    for key in conflict["groups"]:
        assert conflict["user"] in demo_data.group(key)["members"]["users"]
    a, b = (demo_data.group(k) for k in special["same_name"])
    assert a["name"] == b["name"] and a["ou"] != b["ou"]
    assert a["sam_account_name"] != b["sam_account_name"]


def test_demo_accounts_and_service_account(data: dict) -> None:
    assert demo_data.DEMO_ACCOUNTS == {"radiologist": "rad.alice", "technologist": "tech.tom",
                                       "it_admin": "it.ivan", "cardiologist": "card.jon"}
    for name in demo_data.DEMO_ACCOUNTS.values():
        assert not demo_data.user(name)["disabled"]
    svc = data["service_accounts"][0]
    assert svc["username"] == "svc-pacs-bridge" and svc["ou"] == "Service Accounts"
    assert "password" not in svc  # a devstack secret, not demo data


def test_current_otp_matches_pyotp() -> None:
    code = demo_data.current_otp("rad.alice")
    assert pyotp.TOTP(demo_data.user("rad.alice")["totp_secret"]).verify(code)


def test_unknown_user_names_the_user() -> None:
    with pytest.raises(KeyError, match="nobody"):
        demo_data.user("nobody")


def test_validate_names_the_broken_reference(data: dict) -> None:
    broken = copy.deepcopy(data)
    broken["groups"][0]["members"]["users"].append("ghost")
    with pytest.raises(demo_data.DemoDataError, match="ghost"):
        demo_data.validate(broken)


def test_ou_paths_parents_first() -> None:
    paths = demo_data.ou_paths()
    assert paths.index("Staff") < paths.index("Staff/Radiology")
    assert demo_data.ou_dn("Staff/Radiology", "DC=x") == "OU=Radiology,OU=Staff,DC=x"


def test_banner_tolerates_missing_services() -> None:
    text = demo_data.banner({"slapd": {"ldaps_url": "ldaps://127.0.0.1:1", "base_dn": "dc=x"}})
    assert "ldaps://127.0.0.1:1" in text and "rad.alice" in text and "pacs-bridge demo otp USER" in text
    assert "Keycloak" not in text
    full = demo_data.banner({"keycloak": {"url": "https://127.0.0.1:8443", "realm": "hospital"},
                             "orthanc": {"url": "http://127.0.0.1:8042"}, "scim": {"url": "http://x/scim/v2"}})
    assert "https://127.0.0.1:8443/realms/hospital/account/" in full


def test_the_demo_has_scoped_only_staff_and_a_user_with_both(data: dict) -> None:
    """Grants are per role: a cardiologist nested into All-Clinicians (clinician: view everywhere) would see
    every study, so Cardiology is not nested there; card.ines alone is a member herself (both roles)."""
    clinicians = demo_data.group("Groups/Clinical/All-Clinicians")["members"]
    assert "Groups/Clinical/Cardiology" not in clinicians["groups"]
    cardiology = set(demo_data.group("Groups/Clinical/Cardiology")["members"]["users"])
    special = data["special_cases"]
    assert set(special["scoped_only"]["users"]) == cardiology - set(clinicians["users"])
    assert special["unscoped_and_scoped"]["user"] in cardiology & set(clinicians["users"])
    assert demo_data.DEMO_ACCOUNTS["cardiologist"] in special["scoped_only"]["users"]


def test_banner_and_walkthrough_end_with_the_gateway_and_who_to_log_in_as() -> None:
    from pacs_devstack import walkthrough

    info = {"bridge": {"url": "https://127.0.0.1:9443", "gateway_url": "https://127.0.0.1:9443/pacs/"}}
    assert "https://127.0.0.1:9443/pacs/  (log in as rad.alice)" in demo_data.banner(info)
    last = walkthrough.closing(info)
    assert "https://127.0.0.1:9443/pacs/" in last and "log in as rad.alice" in last
    assert "not configured" in walkthrough.closing({"bridge": {"url": "https://x"}})
