"""Sync at hospital scale: 10,000 users and 500 groups (one with 5,000 members) in a slapd of its own.

Measures, and prints as JSON: the first full sync (plan, apply), a no-op resync, a resync after 1%
of memberships changed, peak memory (max RSS of this process), and optionally (``--keycloak``,
needs the dev stack's Keycloak, found through ``PACS_BRIDGE_DEVSTACK_DIR``) Keycloak's own LDAP
full user sync of the same directory as a reference, bounded by ``--keycloak-timeout``.
Targets of issue 3: plan < 5 s, no-op < 10 s, 1% change applied < 30 s, < 300 MB.

    .venv/bin/python bench/sync_scale.py [--users 10000] [--groups 500] [--keycloak [--keycloak-timeout S]]

Keycloak only needs slapd beside it (no Samba):
``PACS_BRIDGE_DEVSTACK_DIR=/tmp/ds-x pacs-bridge devstack up --only slapd --only keycloak``.

Why slapadd: loading 10k entries offline takes about a second, so the benchmark measures the sync,
not the seeding.  The bench slapd listens on plain LDAP on loopback (``allow_plaintext``): TLS cost
is not what is being measured, and this server holds only generated data.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config import DirectorySection
from bridge.directory.reader import OpenLdapReader
from bridge.policy.loader import parse_policy
from bridge.store.db import engine as make_engine
from bridge.store.db import migrate
from bridge.sync.runner import SyncRunner
from bridge.sync.safety import Thresholds
from bridge.sync.targets.store import StoreTarget
from pacs_devstack.state import free_port, port_open

BASE = "dc=bench,dc=test"
ROOT = f"cn=admin,{BASE}"
PASSWORD = "bench-only-Passw0rd"  # generated data on loopback, thrown away after the run
SCHEMA = Path("/etc/ldap/schema")


def ldif(users: int, groups: int, seed: int = 7) -> tuple[str, dict[int, list[int]]]:
    rnd = random.Random(seed)
    out = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: bench\no: Bench Hospital\n"]
    for ou in ("Staff", "Groups"):
        out.append(f"dn: ou={ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou}\n")
    for i in range(users):
        out.append(f"dn: uid=u{i:05d},ou=Staff,{BASE}\nobjectClass: inetOrgPerson\nuid: u{i:05d}\ncn: User {i}\n"
                   f"sn: {i}\ndepartmentNumber: dept{i % 20}\no: Bench Hospital\n")
    members: dict[int, list[int]] = {0: list(range(5000))}  # the big group
    for g in range(1, groups):
        members[g] = rnd.sample(range(users), 40)
    for g, ms in members.items():
        lines = [f"dn: cn=g{g:03d},ou=Groups,{BASE}", "objectClass: groupOfNames", f"cn: g{g:03d}"]
        lines += [f"member: uid=u{m:05d},ou=Staff,{BASE}" for m in ms]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out), members


def start_slapd(tmp: Path, users: int, groups: int) -> tuple[subprocess.Popen[bytes], int, dict[int, list[int]]]:
    hashed = subprocess.run(["slappasswd", "-s", PASSWORD], capture_output=True, text=True, check=True).stdout.strip()
    (tmp / "db").mkdir()
    conf = tmp / "slapd.conf"
    conf.write_text("\n".join([
        *(f"include {SCHEMA / n}.schema" for n in ("core", "cosine", "nis", "inetorgperson")),
        "modulepath /usr/lib/ldap", "moduleload back_mdb", f"pidfile {tmp / 'slapd.pid'}",
        "sizelimit unlimited", "database mdb", "maxsize 1073741824", f'suffix "{BASE}"', f'rootdn "{ROOT}"',
        f"rootpw {hashed}", f"directory {tmp / 'db'}", "index objectClass eq", "index entryCSN eq", ""]))
    text, members = ldif(users, groups)
    (tmp / "data.ldif").write_text(text)
    subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(tmp / "data.ldif")], check=True)
    port = free_port()
    proc = subprocess.Popen(["slapd", "-d", "0", "-h", f"ldap://127.0.0.1:{port}/", "-f", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        if port_open(port, timeout=0.2):
            break
        time.sleep(0.1)
    return proc, port, members


def policy(groups: int) -> str:
    roles = "\n".join(f"  role-{r}: {{description: bench, permissions: [view]}}" for r in range(50))
    rules = "\n".join(f'  - {{id: r{g}, group: {{dn: "cn=g{g:03d},ou=Groups,{BASE}"}}, roles: [role-{g % 50}]}}'
                      for g in range(groups))
    return f"roles:\n{roles}\nrules:\n{rules}\n"


def change_memberships(port: int, members: dict[int, list[int]], users: int, fraction: float) -> int:
    """Move `fraction` of all memberships: delete a member here, add another user there."""
    import ldap3

    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port), ROOT, PASSWORD, auto_bind=True)
    rnd = random.Random(11)
    total = sum(len(v) for v in members.values())
    n = max(1, int(total * fraction / 2))
    for _ in range(n):
        g = rnd.randrange(1, len(members))
        gone = members[g].pop(rnd.randrange(len(members[g])))
        new = rnd.randrange(users)
        while new in members[g]:
            new = rnd.randrange(users)
        members[g].append(new)
        conn.modify(f"cn=g{g:03d},ou=Groups,{BASE}", {"member": [
            (ldap3.MODIFY_DELETE, [f"uid=u{gone:05d},ou=Staff,{BASE}"]),
            (ldap3.MODIFY_ADD, [f"uid=u{new:05d},ou=Staff,{BASE}"])]})
    conn.unbind()
    return 2 * n


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return round(time.perf_counter() - t, 3), out


def keycloak_reference(port: int, timeout_s: int) -> dict[str, Any]:
    """Keycloak's own LDAP full sync of the same directory (a throw-away realm in the dev stack's Keycloak).

    Bounded: the sync is one admin request that Keycloak runs to the end however long it takes, so
    the request gets ``timeout_s``; on a timeout the result says how many users Keycloak had
    imported by then (it goes on server-side until the realm is deleted).
    """
    import requests
    from keycloak import KeycloakAdmin

    from bridge.kcadmin import admin_client
    from pacs_devstack.service import StackContext
    from pacs_devstack.state import read_stack, state_dir

    kc = read_stack().get("keycloak")
    if not kc:
        return {"skipped": f"no Keycloak in the dev stack at {state_dir()}"}
    ctx = StackContext(ca_file=state_dir() / "ca" / "ca.pem")

    def connect(timeout: int) -> KeycloakAdmin:
        # admin_realm (user_realm_name): the admin logs in to master even after change_current_realm;
        # without it the token refresh of a sync longer than the token's 60 s life logs in to the
        # bench realm (401)
        return admin_client(kc["url"], "master", kc["admin_username"], ctx.secret(kc["admin_password_secret"]),
                            admin_realm="master", ca_file=ctx.ca_file, timeout=timeout)

    admin = connect(timeout_s)
    realm = "bench-sync"
    admin.create_realm({"realm": realm, "enabled": True}, skip_exists=True)
    admin.change_current_realm(realm)
    realm_id = admin.get_realm(realm)["id"]
    cfg = {"vendor": ["other"], "connectionUrl": [f"ldap://127.0.0.1:{port}"], "bindDn": [ROOT],
           "bindCredential": [PASSWORD], "usersDn": [f"ou=Staff,{BASE}"], "usernameLDAPAttribute": ["uid"],
           "rdnLDAPAttribute": ["uid"], "uuidLDAPAttribute": ["entryUUID"],
           "userObjectClasses": ["inetOrgPerson"], "editMode": ["READ_ONLY"], "importEnabled": ["true"],
           "pagination": ["true"], "searchScope": ["1"], "authType": ["simple"], "batchSizeForSync": ["1000"],
           "removeInvalidUsersEnabled": ["false"], "trustEmail": ["false"]}
    cid = admin.create_component({"name": "bench-ldap", "providerId": "ldap", "parentId": realm_id,
                                  "providerType": "org.keycloak.storage.UserStorageProvider", "config": cfg})
    out: dict[str, Any] = {"timeout_s": timeout_s}
    try:
        t0 = time.perf_counter()
        try:
            out["result"] = admin.sync_users(cid, "triggerFullSync")
            out["full_user_sync_s"] = round(time.perf_counter() - t0, 3)
        except requests.exceptions.Timeout:
            out["timed_out_after_s"] = round(time.perf_counter() - t0, 3)
        # what Keycloak holds now (on a timeout: how far its sync got)
        counter = connect(60)
        counter.change_current_realm(realm)
        out["users_in_keycloak"] = counter.users_count()
        return out
    finally:
        cleanup = connect(120)
        cleanup.delete_realm(realm)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--keycloak", action="store_true", help="also time Keycloak's LDAP full sync (dev stack)")
    ap.add_argument("--keycloak-timeout", type=int, default=900, metavar="S",
                    help="give up waiting for Keycloak's sync after S seconds (default 900)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    out: dict[str, Any] = {"users": args.users, "groups": args.groups}
    proc = None
    try:
        t, (proc, port, members) = timed(lambda: start_slapd(tmp, args.users, args.groups))
        out["seed_s"] = t
        out["memberships"] = sum(len(v) for v in members.values())
        section = DirectorySection(kind="openldap", url=f"ldap://127.0.0.1:{port}", allow_plaintext=True,
                                   bind_dn=ROOT, bind_password=PASSWORD, base_dn=BASE,
                                   users_dn=f"ou=Staff,{BASE}", groups_dn=f"ou=Groups,{BASE}", page_size=1000)
        url = f"sqlite:///{tmp / 'bridge.db'}"
        migrate(url)
        eng = make_engine(url)
        runner = SyncRunner(OpenLdapReader(section), parse_policy(policy(args.groups)), [StoreTarget(eng)], eng,
                            thresholds=Thresholds(500, 10))

        out["plan_full_s"], (_s, _d, _a, plan, _e) = timed(lambda: runner.compute(full=True))
        out["planned_adds"] = plan.counts()["adds"]
        out["apply_full_s"], rep = timed(lambda: runner.run(apply=True, full=True))
        out["apply_full_status"] = rep.status
        out["noop_resync_s"], rep = timed(lambda: runner.run(apply=True, full=True))
        out["noop_changes"] = rep.plan.counts() if rep.plan else None
        out["incremental_unchanged_s"], rep = timed(lambda: runner.run(apply=True, full=False))
        out["incremental_unchanged_status"] = rep.status
        out["changed_memberships"] = change_memberships(port, members, args.users, 0.01)
        out["one_percent_resync_s"], rep = timed(lambda: runner.run(apply=True, full=True))
        out["one_percent_status"] = rep.status
        out["one_percent_changes"] = rep.plan.counts() if rep.plan else None
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if args.keycloak:
            try:
                out["keycloak_reference"] = keycloak_reference(port, args.keycloak_timeout)
            except Exception as exc:  # the bridge's figures above still get printed
                out["keycloak_reference"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
