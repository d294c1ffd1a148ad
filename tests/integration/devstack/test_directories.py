"""Samba AD and OpenLDAP of the dev stack: TLS binds, the seeded demo hospital, AD semantics."""

from __future__ import annotations

from typing import Any

import ldap3
import pytest

from pacs_devstack import demo_data, ldapseed, samba, slapd
from pacs_devstack.process import DevstackError
from pacs_devstack.service import StackContext
from pacs_devstack.state import state_dir

pytestmark = pytest.mark.integration

IN_CHAIN = "1.2.840.113556.1.4.1941"


@pytest.fixture(scope="module")
def dirs(stack: dict[str, Any]) -> dict[str, Any]:
    missing = [n for n in ("samba", "slapd") if n not in stack]
    if missing:
        pytest.skip(f"dev stack runs without {', '.join(missing)}")
    return stack


@pytest.fixture(scope="module")
def ctx(dirs: dict[str, Any]) -> StackContext:
    """Reads the stack's secrets (secrets.json of the state directory)."""
    return StackContext(ca_file=state_dir() / "ca" / "ca.pem")


def bind(dirs: dict[str, Any], ctx: StackContext, name: str, *,
         url_key: str = "ldaps_url") -> ldap3.Connection:
    """Bind as the service account, as the bridge does."""
    info = dirs[name]
    password = ctx.secret(info["bind_password_secret"])
    return ldapseed.connect(info[url_key], ctx.ca_file, info["bind_dn"], password)


def search(conn: ldap3.Connection, base: str, flt: str, attrs: list[str] | None = None) -> list[dict]:
    assert conn.search(base, flt, attributes=attrs or [], size_limit=0), conn.result
    return [e for e in conn.response if e.get("type") == "searchResEntry"]


def one(entry: dict, attr: str) -> Any:
    """The single value of `attr` (without schema info ldap3 returns every attribute as a list)."""
    values = entry["attributes"][attr]
    return values[0] if isinstance(values, list) else values


def uac(entry: dict) -> int:
    return int(one(entry, "userAccountControl"))


@pytest.mark.parametrize("name", ["samba", "slapd"])
@pytest.mark.parametrize("url_key", ["ldaps_url", "ldap_url"])
def test_service_account_binds_over_verified_tls(dirs, ctx, name: str, url_key: str) -> None:
    conn = bind(dirs, ctx, name, url_key=url_key)
    assert conn.tls_started or conn.server.ssl
    conn.unbind()


@pytest.mark.parametrize("name", ["samba", "slapd"])
def test_wrong_password_is_refused(dirs, ctx, name: str) -> None:
    with pytest.raises(DevstackError, match="bind as"):
        ldapseed.connect(dirs[name]["ldaps_url"], ctx.ca_file, dirs[name]["bind_dn"], "Wrong!Passw0rd")


def test_tls_verification_rejects_a_foreign_ca(dirs, ctx, tmp_path) -> None:
    from pacs_devstack.tls import issue

    other = tmp_path / "other-ca.pem"
    other.write_bytes(issue("samba").cert.read_bytes())  # a leaf is not the CA: must not verify
    with pytest.raises(Exception):  # noqa: B017 - ldap3 raises its own socket/TLS exception types
        ldapseed.connect(dirs["slapd"]["ldaps_url"], other, dirs["slapd"]["bind_dn"], "x")


def test_same_users_in_both_directories(dirs, ctx) -> None:
    expected = {u["username"] for u in demo_data.users()}
    ad = bind(dirs, ctx, "samba")
    ad_users = search(ad, samba.ad_dn("Staff"), "(&(objectClass=user)(objectCategory=person))",
                      ["sAMAccountName", "department", "title", "mail", "displayName", "company"])
    ol = bind(dirs, ctx, "slapd")
    ol_users = search(ol, slapd.ldap_dn("Staff"), "(objectClass=inetOrgPerson)", ["uid"])
    assert {one(e, "sAMAccountName") for e in ad_users} == expected
    assert {one(e, "uid") for e in ol_users} == expected
    assert len(ad_users) == len(ol_users) == len(expected)
    alice = next(e for e in ad_users if one(e, "sAMAccountName") == "rad.alice")
    assert one(alice, "department") == "Radiology" and one(alice, "mail") == "rad.alice@hospital.test"
    assert one(alice, "company") == demo_data.user("rad.alice")["institution"]


@pytest.mark.parametrize("name", ["samba", "slapd"])
def test_demo_accounts_bind_with_their_demo_password(dirs, ctx, name: str) -> None:
    module = samba if name == "samba" else slapd
    for username in demo_data.DEMO_ACCOUNTS.values():
        u = demo_data.user(username)
        ldapseed.connect(dirs[name]["ldaps_url"], ctx.ca_file, module.user_dn(u), u["password"]).unbind()


def test_disabled_user_is_disabled_in_ad(dirs, ctx) -> None:
    gone = demo_data.user(demo_data.load()["special_cases"]["disabled"])
    ad = bind(dirs, ctx, "samba")
    [entry] = search(ad, samba.ad_dn("Staff"), f"(sAMAccountName={gone['username']})", ["userAccountControl"])
    assert uac(entry) & samba.UAC_ACCOUNTDISABLE
    [alice] = search(ad, samba.ad_dn("Staff"), "(sAMAccountName=rad.alice)", ["userAccountControl"])
    assert not uac(alice) & samba.UAC_ACCOUNTDISABLE
    enabled = search(ad, samba.ad_dn("Staff"),
                     "(&(objectCategory=person)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))")
    assert len(enabled) == len(demo_data.users()) - 1
    with pytest.raises(DevstackError):
        ldapseed.connect(dirs["samba"]["ldaps_url"], ctx.ca_file, samba.user_dn(gone), gone["password"])


def test_disabled_user_is_locked_in_openldap(dirs, ctx) -> None:
    gone = demo_data.user(demo_data.load()["special_cases"]["disabled"])
    ol = bind(dirs, ctx, "slapd")
    attr = dirs["slapd"]["disabled_attribute"]
    locked = search(ol, slapd.ldap_dn("Staff"), f"({attr}=*)", ["uid", attr])
    assert [one(e, "uid") for e in locked] == [gone["username"]]
    with pytest.raises(DevstackError):
        ldapseed.connect(dirs["slapd"]["ldaps_url"], ctx.ca_file, slapd.user_dn(gone), gone["password"])


def test_nested_group_resolves_with_the_in_chain_rule(dirs, ctx) -> None:
    nested = demo_data.load()["special_cases"]["nested"]
    outer = samba.group_dn(demo_data.group(nested["outer"]))
    resident = demo_data.group(nested["inner"])["members"]["users"][0]
    ad = bind(dirs, ctx, "samba")
    direct = {one(e, "sAMAccountName") for e in search(ad, samba.BASE_DN, f"(memberOf={outer})",
                                                                 ["sAMAccountName"])}
    chain = {one(e, "sAMAccountName") for e in search(
        ad, samba.BASE_DN, f"(&(objectCategory=person)(memberOf:{IN_CHAIN}:={outer}))", ["sAMAccountName"])}
    assert resident not in direct
    assert resident in chain


def test_conflicting_user_is_in_both_groups(dirs, ctx) -> None:
    conflict = demo_data.load()["special_cases"]["conflicting_groups"]
    u = demo_data.user(conflict["user"])
    ad = bind(dirs, ctx, "samba")
    [entry] = search(ad, samba.ad_dn("Staff"), f"(sAMAccountName={u['username']})", ["memberOf"])
    wanted = {samba.group_dn(demo_data.group(k)).lower() for k in conflict["groups"]}
    assert wanted <= {dn.lower() for dn in entry["attributes"]["memberOf"]}
    ol = bind(dirs, ctx, "slapd")
    [entry] = search(ol, slapd.ldap_dn("Staff"), f"(uid={u['username']})", ["memberOf"])
    assert {slapd.group_dn(demo_data.group(k)).lower() for k in conflict["groups"]} <= {
        dn.lower() for dn in entry["attributes"]["memberOf"]}


def test_same_named_groups_are_distinct_objects(dirs, ctx) -> None:
    a, b = (demo_data.group(k) for k in demo_data.load()["special_cases"]["same_name"])
    ad = bind(dirs, ctx, "samba")
    found = search(ad, samba.ad_dn("Groups"), f"(&(objectClass=group)(cn={a['name']}))", ["objectGUID"])
    assert {e["dn"].lower() for e in found} == {samba.group_dn(a).lower(), samba.group_dn(b).lower()}
    guids = {one(e, "objectGUID") for e in found}
    assert len(guids) == 2
    ol = bind(dirs, ctx, "slapd")
    found = search(ol, slapd.ldap_dn("Groups"), f"(&(objectClass=groupOfNames)(cn={a['name']}))",
                   ["entryUUID"])
    assert len({one(e, "entryUUID") for e in found}) == 2


def test_openldap_refuses_anonymous_reads(dirs, ctx) -> None:
    from urllib.parse import urlsplit

    url = urlsplit(dirs["slapd"]["ldaps_url"])
    server = ldap3.Server(url.hostname, port=url.port, use_ssl=True,
                          tls=ldap3.Tls(ca_certs_file=str(ctx.ca_file), validate=2), get_info=ldap3.NONE)
    conn = ldap3.Connection(server, raise_exceptions=False)
    conn.open()
    ok = conn.search(slapd.BASE_DN, "(objectClass=*)")
    assert not ok or not [e for e in conn.response if e.get("type") == "searchResEntry"]
