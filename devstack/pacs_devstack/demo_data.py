"""The demo hospital directory: one JSON file seeded into both Samba AD and OpenLDAP.

Why one file: the bridge must behave the same against AD and OpenLDAP, so both directories are
seeded from the same people and groups, and the tests, the demo banner and `pacs-bridge demo otp`
read the same source.

Schema of ``devstack/pacs_devstack/data/directory.json`` (``schema_version`` 1)::

    institution, realm, domain, mail_domain   strings describing the demo hospital
    special_cases      where the edge cases live, so tests need not hard-code names:
                       disabled (username), conflicting_groups {user, groups: [group keys]},
                       nested {outer, inner: group keys}, same_name [two group keys]
    service_accounts   [{username, display_name, ou, password_secret, description}]
                       the password is a dev stack secret (StackContext.secret(password_secret)),
                       never stored in this file
    users              [{username, given_name, surname, display_name, email, department, title,
                         institution, ou, password, totp_secret, disabled}]
                       ``ou`` is a path below the base, outermost first: "Staff/Radiology" is
                       OU=Radiology,OU=Staff,DC=hospital,DC=test in AD and
                       ou=Radiology,ou=Staff,dc=hospital,dc=test in OpenLDAP.
                       ``password`` meets AD complexity (3 of 4 classes, no name parts);
                       ``totp_secret`` is base32 and deterministic (demo only!).
    groups             [{key, name, sam_account_name, ou, description,
                         members: {users: [usernames], groups: [group keys]}}]
                       ``key`` = ``ou`` + "/" + ``name`` is the unique reference; ``name`` (the CN)
                       may repeat in different OUs, as in real hospitals (PACS-Users).
                       ``sam_account_name`` is unique domain-wide (AD requires it).
                       Every group has at least one member (groupOfNames requires one).

Usernames are at most 20 characters (the sAMAccountName limit).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path
from typing import Any

import pyotp

DATA_FILE = Path(__file__).with_name("data") / "directory.json"

#: the three accounts the demo walks through (same username and password in AD and OpenLDAP)
DEMO_ACCOUNTS: dict[str, str] = {
    "radiologist": "rad.alice",
    "technologist": "tech.tom",
    "it_admin": "it.ivan",
    "cardiologist": "card.jon",  # scoped only: Cardiology studies, nothing else
}

USER_FIELDS = ("username", "given_name", "surname", "display_name", "email", "department", "title",
               "institution", "ou", "password", "totp_secret", "disabled")
GROUP_FIELDS = ("key", "name", "sam_account_name", "ou", "description", "members")
_BASE32 = re.compile(r"^[A-Z2-7]{16,}=*$")


class DemoDataError(ValueError):
    """directory.json is inconsistent; the message names the entry and field."""


@functools.cache
def load() -> dict[str, Any]:
    """The parsed and validated directory (cached; treat it as read-only)."""
    try:
        data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DemoDataError(f"{DATA_FILE}: {exc}") from exc
    validate(data)
    return data


def validate(data: dict[str, Any]) -> None:
    """Check the cross-references a seeding would otherwise trip over half-way."""
    where = DATA_FILE.name
    users = data.get("users") or []
    names: set[str] = set()
    for i, u in enumerate(users):
        missing = [f for f in USER_FIELDS if f not in u]
        if missing:
            raise DemoDataError(f"{where}: users[{i}] lacks {', '.join(missing)}")
        name = u["username"]
        if name in names:
            raise DemoDataError(f"{where}: user {name!r} appears twice")
        if len(name) > 20:
            raise DemoDataError(f"{where}: user {name!r}: username longer than 20 characters")
        if not _BASE32.match(u["totp_secret"]):
            raise DemoDataError(f"{where}: user {name!r}: totp_secret is not base32")
        if not password_complex(u["password"]):
            raise DemoDataError(f"{where}: user {name!r}: password does not meet AD complexity")
        names.add(name)
    for s in data.get("service_accounts") or []:
        if s["username"] in names:
            raise DemoDataError(f"{where}: service account {s['username']!r} clashes with a user")
    keys: set[str] = set()
    sams: set[str] = set()
    groups = data.get("groups") or []
    for i, g in enumerate(groups):
        missing = [f for f in GROUP_FIELDS if f not in g]
        if missing:
            raise DemoDataError(f"{where}: groups[{i}] lacks {', '.join(missing)}")
        if g["key"] != f"{g['ou']}/{g['name']}":
            raise DemoDataError(f"{where}: group {g['key']!r}: key must be ou + '/' + name")
        if g["key"] in keys:
            raise DemoDataError(f"{where}: group {g['key']!r} appears twice")
        if g["sam_account_name"].lower() in sams:
            raise DemoDataError(f"{where}: group {g['key']!r}: sam_account_name is not unique")
        keys.add(g["key"])
        sams.add(g["sam_account_name"].lower())
    for g in groups:
        members = g["members"]
        if not members.get("users") and not members.get("groups"):
            raise DemoDataError(f"{where}: group {g['key']!r} has no members")
        for m in members.get("users", []):
            if m not in names:
                raise DemoDataError(f"{where}: group {g['key']!r}: member user {m!r} does not exist")
        for m in members.get("groups", []):
            if m not in keys:
                raise DemoDataError(f"{where}: group {g['key']!r}: member group {m!r} does not exist")
    for role, name in DEMO_ACCOUNTS.items():
        if name not in names:
            raise DemoDataError(f"{where}: demo account {role} {name!r} is not among the users")


def password_complex(password: str) -> bool:
    """AD's default complexity: at least 7 characters from 3 of 4 character classes."""
    classes = [any(c.islower() for c in password), any(c.isupper() for c in password),
               any(c.isdigit() for c in password), any(not c.isalnum() for c in password)]
    return len(password) >= 7 and sum(classes) >= 3


def users() -> list[dict[str, Any]]:
    return list(load()["users"])


def groups() -> list[dict[str, Any]]:
    return list(load()["groups"])


def user(username: str) -> dict[str, Any]:
    """One user by username; KeyError naming the user if there is none."""
    for u in load()["users"]:
        if u["username"] == username:
            return u
    raise KeyError(f"no demo user {username!r} in {DATA_FILE.name}")


def group(key: str) -> dict[str, Any]:
    for g in load()["groups"]:
        if g["key"] == key:
            return g
    raise KeyError(f"no demo group {key!r} in {DATA_FILE.name}")


def current_otp(username: str) -> str:
    """The user's TOTP code now (RFC 6238, 30 s, 6 digits), as an authenticator app would show."""
    return pyotp.TOTP(user(username)["totp_secret"]).now()


def ou_paths() -> list[str]:
    """Every OU path the directory needs, parents before children."""
    data = load()
    leaves = {u["ou"] for u in data["users"]} | {g["ou"] for g in data["groups"]}
    leaves |= {s["ou"] for s in data.get("service_accounts", [])}
    paths: set[str] = set()
    for leaf in leaves:
        parts = leaf.split("/")
        paths.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(paths, key=lambda p: (p.count("/"), p))


def ou_dn(path: str, base_dn: str, *, attr: str = "OU") -> str:
    """'Staff/Radiology' -> 'OU=Radiology,OU=Staff,<base_dn>' (attr 'ou' for OpenLDAP's style)."""
    rdns = [f"{attr}={part}" for part in reversed(path.split("/"))]
    return ",".join([*rdns, base_dn])


# ---------------------------------------------------------------- demo banner


def banner(stack: dict[str, Any]) -> str:
    """What `make demo` prints: where things are and how to log in.  Missing services are skipped."""
    lines = ["", "PACS SSO Bridge demo stack", "=" * 26]
    kc = stack.get("keycloak") or {}
    if kc.get("url"):
        realm = kc.get("realm", "hospital")
        lines.append(f"  Keycloak account console  {kc['url'].rstrip('/')}/realms/{realm}/account/")
    bridge = stack.get("bridge") or {}
    if bridge.get("url"):
        lines.append(f"  Bridge (PACS tokens)      {bridge['url']}/login  (metadata: "
                     f"{bridge['url']}/.well-known/oauth-authorization-server)")
        lines.append(f"  Bridge configuration      {bridge.get('config', '')}")
        if bridge.get("gateway_url"):
            lines.append(f"  PACS in the browser       {bridge['gateway_url']}  (log in as rad.alice)")
    orthanc = stack.get("orthanc") or {}
    if orthanc.get("url"):
        lines.append(f"  Orthanc (PACS)            {orthanc['url']}  (every request needs a PACS token)")
    scim = stack.get("scim") or {}
    if scim.get("url"):
        lines.append(f"  SCIM                      {scim['url']}")
    for name, label in (("samba", "Active Directory (LDAPS)"), ("slapd", "OpenLDAP (LDAPS)")):
        svc = stack.get(name) or {}
        if svc.get("ldaps_url"):
            lines.append(f"  {label:26s}{svc['ldaps_url']}  base {svc.get('base_dn', '?')}")
    ca = (stack.get("ca") or {}).get("file")
    if ca:
        lines.append(f"  CA certificate            {ca}")
    if len(lines) == 3:
        lines.append("  (no service is running: run `pacs-bridge devstack up`)")
    lines += ["", "Demo accounts (demo passwords, never use them elsewhere):"]
    for role, name in DEMO_ACCOUNTS.items():
        u = user(name)
        lines.append(f"  {role.replace('_', ' '):13s} {name:10s} {u['password']:16s} {u['display_name']}")
    lines += ["", "Second factor: `pacs-bridge demo otp USER` prints the user's current TOTP code.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacs_devstack.demo_data")
    parser.add_argument("--banner", action="store_true", help="print the demo banner for the running stack")
    parser.add_argument("--check", action="store_true", help="validate directory.json")
    args = parser.parse_args(argv)
    if args.banner:
        from pacs_devstack.state import read_stack

        print(banner(read_stack()))
    else:
        data = load()
        print(f"{DATA_FILE}: {len(data['users'])} users, {len(data['groups'])} groups: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
