"""The Keycloak realm files the dev stack imports: `hospital` (Samba AD) and `hospital-ldap` (OpenLDAP).

Why generate the second: both realms must carry the same clients, roles, LoA step-up flow and
token settings, or a test passing on one directory proves nothing about the other.  The AD realm
`keycloak-realm/hospital-realm.json` is the one source; `hospital-ldap` is derived from it here
by swapping only the realm name and the LDAP federation component (vendor, attributes, URL), so
the two cannot drift.

Secrets and dynamic values stay `${ENV}` placeholders that Keycloak resolves at import time
(see `PLACEHOLDERS`); nothing secret is ever written into these files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pacs_devstack.state import project_root

AD_REALM = "hospital"
LDAP_REALM = "hospital-ldap"
SOURCE = project_root() / "keycloak-realm" / "hospital-realm.json"

#: id of the LDAP federation component in each realm (stable, so sync calls need no lookup)
COMPONENT_IDS = {AD_REALM: "ldap-hospital-ad", LDAP_REALM: "ldap-hospital-openldap"}

#: environment variables the realm files reference; Keycloak resolves them at `--import-realm`
PLACEHOLDERS = (
    "PACS_DIR_URL", "PACS_DIR_BIND_DN", "PACS_DIR_BIND_PASSWORD",
    "PACS_LDAP_URL", "PACS_LDAP_BIND_DN",
    "PACS_BRIDGE_CLIENT_SECRET", "PACS_BRIDGE_URL",
)

_STORAGE = "org.keycloak.storage.UserStorageProvider"
_MAPPER = "org.keycloak.storage.ldap.mappers.LDAPStorageMapper"


class RealmFileError(ValueError):
    """The realm source file is missing a part the generator relies on; the message names it."""


def load_source(path: Path = SOURCE) -> dict[str, Any]:
    try:
        realm = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RealmFileError(f"{path}: {exc}") from exc
    if realm.get("realm") != AD_REALM:
        raise RealmFileError(f"{path}: field 'realm' must be {AD_REALM!r}, found {realm.get('realm')!r}")
    ldap_component(realm, where=str(path))
    return realm


def ldap_component(realm: dict[str, Any], *, where: str = "realm") -> dict[str, Any]:
    """The single LDAP user-storage component of a realm representation."""
    found = [c for c in realm.get("components", {}).get(_STORAGE, []) if c.get("providerId") == "ldap"]
    if len(found) != 1:
        raise RealmFileError(f"{where}: components.{_STORAGE} must hold exactly one 'ldap' provider, "
                             f"found {len(found)}")
    return found[0]


def _mapper(name: str, ldap_attribute: str, model_attribute: str, *, mandatory: bool = False,
            always_read: bool = False) -> dict[str, Any]:
    return {
        "name": name, "providerId": "user-attribute-ldap-mapper", "subComponents": {},
        "config": {"ldap.attribute": [ldap_attribute], "user.model.attribute": [model_attribute],
                   "read.only": ["true"], "always.read.value.from.ldap": [str(always_read).lower()],
                   "is.mandatory.in.ldap": [str(mandatory).lower()]},
    }


def openldap_variant(ad_realm: dict[str, Any]) -> dict[str, Any]:
    """`hospital-ldap`: the AD realm with the federation pointed at slapd (uid, entryUUID, inetOrgPerson)."""
    realm = copy.deepcopy(ad_realm)
    realm["realm"] = LDAP_REALM
    realm["displayName"] = f"{ad_realm.get('displayName', AD_REALM)} (OpenLDAP)"
    comp = ldap_component(realm)
    comp["id"] = COMPONENT_IDS[LDAP_REALM]
    comp["name"] = "hospital-openldap"
    cfg = comp["config"]
    cfg.update({
        "vendor": ["other"],
        "connectionUrl": ["${PACS_LDAP_URL}"],
        "bindDn": ["${PACS_LDAP_BIND_DN}"],
        "bindCredential": ["${PACS_DIR_BIND_PASSWORD}"],
        "usersDn": ["ou=Staff,dc=hospital,dc=test"],
        "usernameLDAPAttribute": ["uid"],
        "rdnLDAPAttribute": ["uid"],
        "uuidLDAPAttribute": ["entryUUID"],
        "userObjectClasses": ["inetOrgPerson, organizationalPerson"],
    })
    comp["subComponents"] = {_MAPPER: [
        _mapper("username", "uid", "username", mandatory=True),
        _mapper("email", "mail", "email"),
        _mapper("first name", "givenName", "firstName", always_read=True),
        _mapper("last name", "sn", "lastName", always_read=True),
    ]}
    return realm


def realms(source: Path = SOURCE) -> dict[str, dict[str, Any]]:
    """Both realm representations, by realm name."""
    ad = load_source(source)
    ldap_component(ad)["id"] = COMPONENT_IDS[AD_REALM]
    return {AD_REALM: ad, LDAP_REALM: openldap_variant(ad)}


def write_import_dir(dest: Path, source: Path = SOURCE) -> list[Path]:
    """Write `<realm>-realm.json` for both realms into Keycloak's import directory (replacing old ones)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.json"):
        old.unlink()
    written = []
    for name, rep in realms(source).items():
        path = dest / f"{name}-realm.json"
        path.write_text(json.dumps(rep, indent=2), encoding="utf-8")
        written.append(path)
    return written
