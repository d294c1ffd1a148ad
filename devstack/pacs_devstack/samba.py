"""Samba AD DC: the hospital's Active Directory (realm HOSPITAL.TEST, base DC=hospital,DC=test).

Why a real DC and not an LDAP server with AD-ish schema: the bridge relies on AD semantics
(objectGUID, userAccountControl, the in-chain matching rule, unicodePwd) that only a DC has.

How (see shared reference "active-directory.md"):

* Provisioning takes ~5-10 s, so it happens once into a template in the cache directory, keyed by
  a hash of the samba version and the provisioning arguments; each `up` copies the template with
  `cp -a` (keeps the NT ACL xattrs, ~0.03 s) into ``<state>/samba/dc`` and rewrites
  ``etc/smb.conf``: only LDAP server, loopback, private pid/socket dirs, our own TLS certificate.
  Each `up` starts from a clean directory, so seeding never meets leftovers of an earlier run.
* The Administrator password is set offline (SamDB, ~0.3 s) to the devstack secret
  ``samba-admin`` before start; the bridge and Keycloak bind as the ordinary (read-only, as any AD
  user is) account ``svc-pacs-bridge`` with the secret ``directory-bind``.
* ``samba -F -M single`` runs in its own session, so it outlives the caller (`make demo`) and
  `down` stops its process group.  Ports 389/636 are fixed by Samba: run a second DC only in a
  private network namespace (``unshare --net``).
* Seeding uses ldap3 over LDAPS (``unicodePwd``, ``userAccountControl`` 514 for the disabled one).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from pacs_devstack import demo_data, ldapseed, process, tls
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import cache_dir

REALM = "HOSPITAL.TEST"
DOMAIN = "HOSPITAL"
BASE_DN = "DC=hospital,DC=test"
ADMIN_DN = f"CN=Administrator,CN=Users,{BASE_DN}"
BIND_SECRET = "directory-bind"
ADMIN_SECRET = "samba-admin"
SAMBA_PYTHON = "/usr/bin/python3"  # python3-samba lives in the system interpreter, not the venv

#: userAccountControl flags (MS-ADTS 2.2.16)
UAC_ACCOUNTDISABLE = 0x2
UAC_NORMAL_ACCOUNT = 0x200
UAC_DONT_EXPIRE_PASSWORD = 0x10000
GLOBAL_SECURITY_GROUP = -2147483646  # groupType: ACCOUNT_GROUP | SECURITY_ENABLED

_PROVISION_ARGS = (
    f"--realm={REALM}", f"--domain={DOMAIN}", "--server-role=dc", "--dns-backend=NONE",
    "--host-name=dc1", "--use-rfc2307", "--option=interfaces=lo", "--option=bind interfaces only=yes",
)
_TEMPLATE_FORMAT = "1"

# Sets the Administrator password in the stopped DC's sam.ldb; the password comes on stdin so that
# it never shows in a process listing.
_SET_ADMIN_PASSWORD = """
import sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
db.setpassword("(sAMAccountName=Administrator)", sys.stdin.readline().rstrip("\\n"))
"""


def ad_dn(ou_path: str) -> str:
    return demo_data.ou_dn(ou_path, BASE_DN, attr="OU")


def user_dn(u: dict[str, Any]) -> str:
    """AD names users by full name (CN), as ADUC does; the login name is sAMAccountName."""
    return f"CN={u['given_name']} {u['surname']},{ad_dn(u['ou'])}"


def group_dn(g: dict[str, Any]) -> str:
    return f"CN={g['name']},{ad_dn(g['ou'])}"


def service_dn(s: dict[str, Any]) -> str:
    return f"CN={s['username']},{ad_dn(s['ou'])}"


def _samba_version() -> str:
    out = subprocess.run(["samba", "-V"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def template_dir() -> Path:
    """The provisioned (never started) DC for these inputs, created on first use."""
    inputs = "\n".join([_TEMPLATE_FORMAT, _samba_version(), *_PROVISION_ARGS])
    key = hashlib.sha256(inputs.encode()).hexdigest()
    target = cache_dir() / f"samba-template-{key[:16]}"
    if (target / "etc" / "smb.conf").exists():
        return target
    work = target.with_name(target.name + f".tmp{time.monotonic_ns()}")
    work.mkdir(parents=True)
    empty = work / "empty-smb.conf"
    empty.write_text("")  # without -s, Debian's /etc/samba/smb.conf would be merged in
    # a throw-away admin password: the real one is set per state directory (secret samba-admin)
    throwaway = "Tmp1!" + secrets.token_urlsafe(16)
    try:
        process.run(["samba-tool", "domain", "provision", "-s", str(empty), f"--targetdir={work}",
                     f"--adminpass={throwaway}", *_PROVISION_ARGS],
                    what="samba-tool domain provision", timeout=300)
        empty.unlink()
        conf = work / "etc" / "smb.conf"  # the only file holding absolute paths
        conf.write_text(conf.read_text().replace(str(work), str(target)))
        try:
            work.rename(target)
        except OSError:  # another run provisioned the same template meanwhile: use theirs
            if not (target / "etc" / "smb.conf").exists():
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def _write_conf(dc: Path, template: Path, cert: tls.CertPair) -> Path:
    """Take the template's smb.conf, point it at `dc`, and pin down everything that would escape it."""
    conf = dc / "etc" / "smb.conf"
    text = conf.read_text().replace(str(template), str(dc))
    run = dc / "run"
    for sub in ("ncalrpc", "ntp_signd", "winbindd"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    ours = {
        "server services": "ldap",
        "ldap server require strong auth": "yes",
        "pid directory": str(run),
        "ncalrpc dir": str(run / "ncalrpc"),
        "ntp signd socket directory": str(run / "ntp_signd"),
        "winbindd socket directory": str(run / "winbindd"),
        "tls enabled": "yes",
        "tls keyfile": str(cert.key),
        "tls certfile": str(cert.cert),
        "tls cafile": "",
        "log level": "1",
    }
    out: list[str] = []
    section = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            if section == "global":
                out += [f"\t{k} = {v}" for k, v in ours.items()] + [""]
            section = stripped.strip("[]").lower()
        elif section == "global" and stripped.split("=")[0].strip().lower() in ours:
            continue  # replace, do not append: a later line would win anyway, but keep it readable
        out.append(line)
    conf.write_text("\n".join(out) + "\n")
    return conf


class Samba(Service):
    name = "samba"
    apt_packages = ("samba", "samba-dsdb-modules", "samba-ad-provision", "samba-vfs-modules", "python3-samba")

    ldaps_url = "ldaps://127.0.0.1:636"
    ldap_url = "ldap://127.0.0.1:389"

    @property
    def dc(self) -> Path:
        return self.dir / "dc"

    @property
    def conf(self) -> Path:
        return self.dc / "etc" / "smb.conf"

    def prepare(self, ctx: StackContext) -> None:
        template = template_dir()
        if self.dc.exists():
            shutil.rmtree(self.dc)
        process.run(["cp", "-a", str(template), str(self.dc)], what="copy the Samba template")
        _write_conf(self.dc, template, tls.issue("samba"))
        process.run([SAMBA_PYTHON, "-c", _SET_ADMIN_PASSWORD, str(self.conf)],
                    what="set the Samba admin password", input_text=ctx.secret(ADMIN_SECRET) + "\n",
                    timeout=120)

    def start(self, ctx: StackContext) -> None:
        process.start(self.name, ["samba", "-F", "-M", "single", "-s", str(self.conf),
                                  "-l", str(self.dc / "log")])

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        rec = process.load(self.name)

        def bound() -> bool:
            password = ctx.secret(ADMIN_SECRET)
            ldapseed.connect(self.ldaps_url, ctx.ca_file, ADMIN_DN, password, timeout=3).unbind()
            return True

        process.wait_until(bound, what="Samba AD LDAPS bind", timeout=60, rec=rec)
        svc = demo_data.load()["service_accounts"][0]
        return {
            "ldaps_url": self.ldaps_url,
            "ldap_url": self.ldap_url,
            "base_dn": BASE_DN,
            "users_dn": ad_dn("Staff"),
            "groups_dn": ad_dn("Groups"),
            "bind_dn": service_dn(svc),
            "bind_password_secret": BIND_SECRET,
            "admin_dn": ADMIN_DN,
            "admin_password_secret": ADMIN_SECRET,
            "realm": REALM,
        }

    def seed(self, ctx: StackContext) -> None:
        conn = ldapseed.connect(self.ldaps_url, ctx.ca_file, ADMIN_DN, ctx.secret(ADMIN_SECRET))
        try:
            seed_directory(conn, ctx)
        finally:
            conn.unbind()


def _unicode_pwd(password: str) -> bytes:
    """AD's password write format: the quoted password in UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


def seed_directory(conn: Any, ctx: StackContext) -> None:
    """OUs, the service account, users (with passwords), groups, then memberships (groups may nest)."""
    data = demo_data.load()
    for path in demo_data.ou_paths():
        ldapseed.add(conn, ad_dn(path), "organizationalUnit", {})
    for s in data["service_accounts"]:
        ldapseed.add(conn, service_dn(s), "user", {
            "sAMAccountName": s["username"],
            "userPrincipalName": f"{s['username']}@{REALM.lower()}",
            "displayName": s["display_name"],
            "description": s["description"],
            "unicodePwd": _unicode_pwd(ctx.secret(s["password_secret"])),
            "userAccountControl": str(UAC_NORMAL_ACCOUNT | UAC_DONT_EXPIRE_PASSWORD),
        })
    for u in data["users"]:
        uac = UAC_NORMAL_ACCOUNT | (UAC_ACCOUNTDISABLE if u["disabled"] else 0)
        ldapseed.add(conn, user_dn(u), "user", {
            "sAMAccountName": u["username"],
            "userPrincipalName": f"{u['username']}@{REALM.lower()}",
            "givenName": u["given_name"],
            "sn": u["surname"],
            "displayName": u["display_name"],
            "mail": u["email"],
            "department": u["department"],
            "title": u["title"],
            "company": u["institution"],
            "unicodePwd": _unicode_pwd(u["password"]),
            "userAccountControl": str(uac),
        })
    users = {u["username"]: user_dn(u) for u in data["users"]}
    groups = {g["key"]: group_dn(g) for g in data["groups"]}
    for g in data["groups"]:
        ldapseed.add(conn, groups[g["key"]], "group", {
            "sAMAccountName": g["sam_account_name"],
            "description": g["description"],
            "groupType": str(GLOBAL_SECURITY_GROUP),
        })
    for g in data["groups"]:
        members = [users[m] for m in g["members"].get("users", [])] + \
                  [groups[m] for m in g["members"].get("groups", [])]
        ldapseed.replace(conn, groups[g["key"]], {"member": members})


SERVICE = Samba()
