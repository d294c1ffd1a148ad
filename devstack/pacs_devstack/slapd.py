"""OpenLDAP slapd: the "generic LDAP" hospital directory (base dc=hospital,dc=test).

Why: hospitals without AD run OpenLDAP-style directories; the bridge must sync from them with the
same demo people and groups, and Keycloak's LDAP federation verifies passwords by bind.

How:

* Own ``slapd.conf`` (not cn=config: one readable file, checked with ``slaptest``) and an mdb
  database under ``<state>/slapd``, rebuilt on each `up` so seeding starts clean.
* ``ldaps://127.0.0.1:<free port>`` with the dev stack CA's certificate and ``ldap://`` on another
  free port for StartTLS; loopback only.  ``slapd -d 0`` stays in the foreground in its own
  session, so it outlives the caller and `down` stops its process group.
* Schema core, cosine, nis, inetorgperson.  Overlays:
  - ``memberof``: groupOfNames ``member`` values are reflected as ``memberOf`` on users and on
    nested groups (direct membership only, as in AD).
  - ``ppolicy``: supplies ``pwdAccountLockedTime`` (its schema is built into the 2.5 module).
    **The disabled account carries ``pwdAccountLockedTime: 000001010000Z``** (permanently
    locked), which is the bridge's default ``directory.disabled_attribute``; ppolicy then also
    refuses its binds, like AD refuses a disabled account.
* ACL: anyone may *authenticate* against ``userPassword`` (needed for simple binds); only bound
  users read the directory (the service account ``cn=svc-pacs-bridge,ou=Service
  Accounts,dc=hospital,dc=test`` among them); anonymous reads get nothing.  ``entryUUID`` is
  maintained by slapd (operational).
* Users are ``uid=<username>,ou=<department OU>,ou=Staff,dc=hospital,dc=test``: the same OU tree
  as in AD (search ``ou=Staff`` with subtree scope).  Groups are ``groupOfNames`` under
  ``ou=Groups`` with the same sub-OUs, nested groups as member DNs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from pacs_devstack import demo_data, ldapseed, process, tls
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port

BASE_DN = "dc=hospital,dc=test"
ROOT_DN = f"cn=admin,{BASE_DN}"
BIND_SECRET = "directory-bind"
ADMIN_SECRET = "slapd-admin"
DISABLED_ATTRIBUTE = "pwdAccountLockedTime"
DISABLED_VALUE = "000001010000Z"  # ppolicy: locked until an administrator unlocks
#: ppolicy enforces pwdAccountLockedTime only under a policy with pwdLockout (measured: without one
#: the locked account still binds)
POLICY_DN = f"cn=default,ou=Policies,{BASE_DN}"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")


def ldap_dn(ou_path: str) -> str:
    return demo_data.ou_dn(ou_path, BASE_DN, attr="ou")


def user_dn(u: dict[str, Any]) -> str:
    return f"uid={u['username']},{ldap_dn(u['ou'])}"


def group_dn(g: dict[str, Any]) -> str:
    return f"cn={g['name']},{ldap_dn(g['ou'])}"


def service_dn(s: dict[str, Any]) -> str:
    return f"cn={s['username']},{ldap_dn(s['ou'])}"


def ssha(password: str) -> str:
    """RFC 2307 {SSHA} hash, as slappasswd writes it (slapd verifies it on bind)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - the format slapd expects
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _config(d: Path, cert: tls.CertPair, root_password: str) -> str:
    names = ("core", "cosine", "nis", "inetorgperson")
    schemas = "\n".join(f"include {SCHEMA_DIR / n}.schema" for n in names)
    return f"""# written by pacs_devstack.slapd; rebuilt on every `pacs-bridge devstack up`
{schemas}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload memberof
moduleload ppolicy
pidfile {d / "slapd.pid"}
argsfile {d / "slapd.args"}
TLSCACertificateFile {cert.ca}
TLSCertificateFile {cert.cert}
TLSCertificateKeyFile {cert.key}
disallow bind_anon

database mdb
suffix "{BASE_DN}"
rootdn "{ROOT_DN}"
rootpw {ssha(root_password)}
directory {d / "db"}
maxsize 67108864
index objectClass,uid,cn,member,memberOf eq
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true
overlay ppolicy
ppolicy_default "{POLICY_DN}"

access to attrs=userPassword
    by anonymous auth
    by self =xw
    by * none
access to *
    by users read
    by * none
"""


class Slapd(Service):
    name = "slapd"
    apt_packages = ("slapd", "ldap-utils")

    @property
    def conf(self) -> Path:
        return self.dir / "slapd.conf"

    def prepare(self, ctx: StackContext) -> None:
        db = self.dir / "db"
        if db.exists():
            shutil.rmtree(db)
        db.mkdir(mode=0o700)
        self.conf.write_text(_config(self.dir, tls.issue("slapd"), ctx.secret(ADMIN_SECRET)))
        self.conf.chmod(0o600)
        process.run(["slaptest", "-u", "-f", str(self.conf)], what=f"slaptest {self.conf}")
        self.ldaps_port, self.ldap_port = free_port(), free_port()
        while self.ldap_port == self.ldaps_port:
            self.ldap_port = free_port()

    def start(self, ctx: StackContext) -> None:
        urls = f"ldaps://127.0.0.1:{self.ldaps_port}/ ldap://127.0.0.1:{self.ldap_port}/"
        process.start(self.name, ["slapd", "-d", "0", "-h", urls, "-f", str(self.conf)])
        (self.dir / "ports").write_text(f"{self.ldaps_port} {self.ldap_port}\n")

    def _ports(self) -> tuple[int, int]:
        """From the running instance's record, so `up` on an already running stack still reports them."""
        try:
            ldaps, ldap = (self.dir / "ports").read_text().split()
        except (OSError, ValueError):
            raise DevstackError(f"slapd: {self.dir / 'ports'} is missing; "
                                "run `pacs-bridge devstack down`") from None
        return int(ldaps), int(ldap)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        ldaps_port, ldap_port = self._ports()
        ldaps_url = f"ldaps://127.0.0.1:{ldaps_port}"

        def bound() -> bool:
            ldapseed.connect(ldaps_url, ctx.ca_file, ROOT_DN, ctx.secret(ADMIN_SECRET), timeout=3).unbind()
            return True

        process.wait_until(bound, what="slapd LDAPS bind", timeout=30, rec=process.load(self.name))
        svc = demo_data.load()["service_accounts"][0]
        return {
            "ldaps_url": ldaps_url,
            "ldap_url": f"ldap://127.0.0.1:{ldap_port}",
            "base_dn": BASE_DN,
            "users_dn": ldap_dn("Staff"),
            "groups_dn": ldap_dn("Groups"),
            "bind_dn": service_dn(svc),
            "bind_password_secret": BIND_SECRET,
            "admin_dn": ROOT_DN,
            "admin_password_secret": ADMIN_SECRET,
            "disabled_attribute": DISABLED_ATTRIBUTE,
        }

    def seed(self, ctx: StackContext) -> None:
        ldaps_url = f"ldaps://127.0.0.1:{self._ports()[0]}"
        conn = ldapseed.connect(ldaps_url, ctx.ca_file, ROOT_DN, ctx.secret(ADMIN_SECRET))
        try:
            seed_directory(conn, ctx)
        finally:
            conn.unbind()


def _groups_inner_first(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """groupOfNames needs its members at creation, so nested groups are added before their parents."""
    by_key = {g["key"]: g for g in groups}
    graph = {g["key"]: set(g["members"].get("groups", [])) for g in groups}
    try:
        return [by_key[k] for k in TopologicalSorter(graph).static_order()]
    except CycleError as exc:
        raise DevstackError(f"{demo_data.DATA_FILE.name}: group nesting has a cycle: {exc.args[1]}") from None


def seed_directory(conn: Any, ctx: StackContext) -> None:
    """Base entry, OUs, service account, users, then groups (inner before outer)."""
    data = demo_data.load()
    ldapseed.add(conn, BASE_DN, ["dcObject", "organization"], {"dc": "hospital", "o": data["institution"]})
    for path in ["Policies", *demo_data.ou_paths()]:
        ldapseed.add(conn, ldap_dn(path), "organizationalUnit", {"ou": path.rsplit("/", 1)[-1]})
    ldapseed.add(conn, POLICY_DN, ["organizationalRole", "pwdPolicy"], {
        "cn": "default", "pwdAttribute": "userPassword", "pwdLockout": "TRUE",
        "pwdMaxFailure": "0",  # no lockout after failed binds: tests try wrong passwords on purpose
    })
    for s in data["service_accounts"]:
        ldapseed.add(conn, service_dn(s), ["organizationalRole", "simpleSecurityObject"], {
            "cn": s["username"],
            "description": s["description"],
            "userPassword": ssha(ctx.secret(s["password_secret"])),
        })
    for u in data["users"]:
        attrs: dict[str, Any] = {
            "uid": u["username"],
            "cn": f"{u['given_name']} {u['surname']}",
            "givenName": u["given_name"],
            "sn": u["surname"],
            "displayName": u["display_name"],
            "mail": u["email"],
            "departmentNumber": u["department"],
            "title": u["title"],
            "o": u["institution"],
            "userPassword": ssha(u["password"]),
        }
        if u["disabled"]:
            attrs[DISABLED_ATTRIBUTE] = DISABLED_VALUE
        ldapseed.add(conn, user_dn(u), "inetOrgPerson", attrs)
    users = {u["username"]: user_dn(u) for u in data["users"]}
    groups = {g["key"]: group_dn(g) for g in data["groups"]}
    for g in _groups_inner_first(data["groups"]):
        members = [users[m] for m in g["members"].get("users", [])] + \
                  [groups[m] for m in g["members"].get("groups", [])]
        ldapseed.add(conn, groups[g["key"]], "groupOfNames",
                     {"cn": g["name"], "description": g["description"], "member": members})


SERVICE = Slapd()
