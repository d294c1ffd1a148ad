"""The two Keycloak realms stay identical except for the directory they federate."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pacs_devstack import realm

STORAGE = "org.keycloak.storage.UserStorageProvider"
MAPPERS = "org.keycloak.storage.ldap.mappers.LDAPStorageMapper"


@pytest.fixture(scope="module")
def realms() -> dict[str, dict[str, Any]]:
    return realm.realms()


def without_federation(rep: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in rep.items() if k not in ("realm", "displayName", "components")}
    return json.loads(json.dumps(rest))


def test_common_parts_are_identical(realms: dict[str, dict[str, Any]]) -> None:
    assert without_federation(realms[realm.AD_REALM]) == without_federation(realms[realm.LDAP_REALM])


def test_ad_federation(realms: dict[str, dict[str, Any]]) -> None:
    comp = realm.ldap_component(realms[realm.AD_REALM])
    cfg = comp["config"]
    assert comp["id"] == realm.COMPONENT_IDS[realm.AD_REALM]
    assert cfg["vendor"] == ["ad"]
    assert cfg["connectionUrl"] == ["${PACS_DIR_URL}"]
    assert cfg["uuidLDAPAttribute"] == ["objectGUID"]
    assert cfg["usernameLDAPAttribute"] == ["sAMAccountName"]
    assert cfg["editMode"] == ["READ_ONLY"]
    assert cfg["pagination"] == ["true"]
    assert cfg["removeInvalidUsersEnabled"] == ["false"]
    providers = {m["providerId"] for m in comp["subComponents"][MAPPERS]}
    assert "msad-user-account-control-mapper" in providers


def test_openldap_federation(realms: dict[str, dict[str, Any]]) -> None:
    comp = realm.ldap_component(realms[realm.LDAP_REALM])
    cfg = comp["config"]
    assert cfg["vendor"] == ["other"]
    assert cfg["connectionUrl"] == ["${PACS_LDAP_URL}"]
    assert cfg["uuidLDAPAttribute"] == ["entryUUID"]
    assert cfg["usernameLDAPAttribute"] == ["uid"]
    assert "inetOrgPerson" in cfg["userObjectClasses"][0]
    mapped = {m["config"]["user.model.attribute"][0] for m in comp["subComponents"][MAPPERS]}
    assert mapped == {"username", "email", "firstName", "lastName"}
    # settings the derivation does not touch stay as in the AD realm
    ad_cfg = realm.ldap_component(realms[realm.AD_REALM])["config"]
    for key in ("editMode", "pagination", "removeInvalidUsersEnabled", "useTruststoreSpi", "importEnabled"):
        assert cfg[key] == ad_cfg[key]


def test_mfa_policy(realms: dict[str, dict[str, Any]]) -> None:
    rep = realms[realm.AD_REALM]
    assert json.loads(rep["attributes"]["acr.loa.map"]) == {"pwd": 1, "mfa": 2}
    assert rep["otpPolicyCodeReusable"] is False
    assert rep["bruteForceProtected"] is True
    assert rep["accessTokenLifespan"] == 300
    clients = {c["clientId"]: c for c in rep["clients"]}
    for name in ("pacs-viewer", "pacs"):
        assert clients[name]["attributes"]["minimum.acr.value"] == "mfa"
    assert clients["pacs-viewer"]["publicClient"] is True
    assert clients["pacs-viewer"]["attributes"]["pkce.code.challenge.method"] == "S256"
    configs = {c["alias"]: c["config"] for c in rep["authenticatorConfig"]}
    amr = [c for c in configs.values() if "default.reference.value" in c]
    assert {c["default.reference.value"] for c in amr} == {"pwd", "otp"}
    # maxAge 0 would drop amr from every token issued after the login second
    assert all(int(c["default.reference.maxAge"]) >= rep["ssoSessionMaxLifespan"] for c in amr)


def test_flow_references_resolve(realms: dict[str, dict[str, Any]]) -> None:
    rep = realms[realm.AD_REALM]
    flows = {f["alias"] for f in rep["authenticationFlows"]}
    configs = {c["alias"] for c in rep["authenticatorConfig"]}
    assert rep["browserFlow"] in flows
    for flow in rep["authenticationFlows"]:
        for ex in flow["authenticationExecutions"]:
            if ex["authenticatorFlow"]:
                assert ex["flowAlias"] in flows
            if "authenticatorConfig" in ex:
                assert ex["authenticatorConfig"] in configs


def test_only_known_placeholders(realms: dict[str, dict[str, Any]]) -> None:
    """Every `${VAR}` is one the Keycloak service sets: an unknown one would leak into the realm verbatim."""
    text = json.dumps(list(realms.values()))
    assert set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)) <= set(realm.PLACEHOLDERS)


def test_roles_are_marked_managed(realms: dict[str, dict[str, Any]]) -> None:
    roles = realms[realm.AD_REALM]["roles"]["realm"]
    assert {r["name"] for r in roles} == {"radiologist", "technologist", "referring-physician", "pacs-admin",
                                          "auditor"}
    assert all(r["attributes"]["managed-by"] == ["pacs-bridge"] for r in roles)


def test_write_import_dir(tmp_path: Path) -> None:
    (tmp_path / "stale.json").write_text("{}")
    written = realm.write_import_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert {json.loads(p.read_text())["realm"] for p in written} == {realm.AD_REALM, realm.LDAP_REALM}


def test_bad_source_names_the_field(tmp_path: Path) -> None:
    src = tmp_path / "r.json"
    src.write_text(json.dumps({"realm": "other"}))
    with pytest.raises(realm.RealmFileError, match="'realm'"):
        realm.load_source(src)
    src.write_text(json.dumps({"realm": "hospital", "components": {}}))
    with pytest.raises(realm.RealmFileError, match="exactly one 'ldap'"):
        realm.load_source(src)
