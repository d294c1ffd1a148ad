"""Access review benchmark: a review of 10,000 users, 500 groups and 1,000,000 audit records.

    .venv/bin/python bench/review.py [--users 10000] [--groups 500] [--records 1000000] [--dir DIR]

Prints one JSON object: the time to compute the review (SQL aggregation over the trail, the
policy over the directory) and to store the campaign, and the peak RSS of the process doing it
(the review runs in a child process, so the corpus set-up does not count), with the load average.
Targets (issue 13): < 10 s and < 500 MB.

The corpus: users in 10 departments, 500 groups (each user in 3 to 6), a policy with 200 rules
over 20 roles (a few department-scoped, one privileged, a warn conflict), the assignment rows a
sync would write, and 1,000,000 audit records (logins, PACS accesses with their studies'
departments, denials, some hand-made role assignments) written in bulk (a valid chain is not
needed to review).  SQLite unless ``--url`` names another store.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.core.audit_codes import AuditEventType
from bridge.core.audit_events import format_time
from bridge.directory.model import DirectoryGroup, DirectorySnapshot, DirectoryUser
from bridge.policy.loader import parse_policy
from bridge.store import db

ISS = "https://bridge.bench"
DEPTS = ["Radiology", "Cardiology", "Emergency", "Oncology", "Neurology", "Surgery", "Pediatrics", "IT",
         "Compliance", "Orthopedics"]


def corpus(users: int, groups: int, seed: int = 7) -> tuple[DirectorySnapshot, Any]:
    rnd = random.Random(seed)
    gs = {f"g{i:04d}": DirectoryGroup(f"g{i:04d}", f"CN=G{i:04d},OU=Groups,DC=b,DC=t", f"G{i:04d}")
          for i in range(groups)}
    us: dict[str, DirectoryUser] = {}
    mem: dict[str, frozenset[str]] = {}
    gids = sorted(gs)
    for i in range(users):
        uid = f"{uuid.UUID(int=rnd.getrandbits(128))}"
        us[uid] = DirectoryUser(uid, f"CN=u{i},OU=Staff,DC=b,DC=t", f"user{i:05d}", department=DEPTS[i % len(DEPTS)],
                                disabled=i % 97 == 0)
        mem[uid] = frozenset(rnd.sample(gids, rnd.randint(3, 6)))
    # the reviewers: group 0 + department heads in groups 1..10
    roles = "\n".join(
        f"  role{r:02d}: {{description: r, permissions: [{'admin' if r == 0 else 'view, download'}]"
        + (f", scopes: {{departments: [{DEPTS[r % len(DEPTS)]}]}}" if r % 5 == 1 else "") + "}"
        for r in range(20))
    rules = "\n".join(f"  - {{id: rule{k:03d}, group: {{dn: \"CN=G{k + 20:04d},OU=Groups,DC=b,DC=t\"}}, "
                      f"roles: [role{k % 20:02d}]}}" for k in range(200))
    scopes = "\n".join(f"    - {{id: head{d}, group: {{dn: \"CN=G{d + 1:04d},OU=Groups,DC=b,DC=t\"}}, "
                       f"departments: [{DEPTS[d]}]}}" for d in range(len(DEPTS)))
    policy = parse_policy(f"""
roles:
{roles}
rules:
{rules}
conflicts:
  - {{id: c1, roles: [role02, role03], action: warn}}
reviewers:
  privacy_officer: {{group: {{dn: "CN=G0000,OU=Groups,DC=b,DC=t"}}}}
  scopes:
{scopes}
""")
    return DirectorySnapshot(us, gs, mem), policy


def fill(url: str, snap: DirectorySnapshot, policy: Any, records: int, seed: int = 11) -> dict[str, Any]:
    """Assignment rows as the sync writes them, and ``records`` audit rows in bulk."""
    from bridge.audit.chain import HASHED
    from bridge.review.build import scoped_departments
    from bridge.store.models import RoleAssignment
    from bridge.sync.desired import desired_state

    rnd = random.Random(seed)
    # users whose every role is department-scoped: the PACS refuses their other departments, so
    # their *allowed* accesses are to their departments; one in a thousand is not (the alarm case)
    scoped = {uid: sorted(d) for uid, d in scoped_departments(policy, snapshot=snap).items()}
    db.migrate(url)
    eng = db.engine(url)
    t0 = time.perf_counter()
    desired = desired_state(snap, policy)
    rows = [{"subject_id": uid, "username": snap.users[uid].username, "role": role, "source_group_dn": w.group_dn,
             "rule_id": w.rule_id, "scopes": policy.roles[role].scope(), "managed": True,
             "created_at": dt.datetime.now(dt.UTC), "updated_at": dt.datetime.now(dt.UTC)}
            for (uid, role), w in desired.assignments.items()]
    with db.session(eng) as s:
        s.execute(RoleAssignment.__table__.insert(), rows)
    uids = sorted(snap.users)
    now = dt.datetime.now(dt.UTC)
    ph = "%s" if eng.dialect.paramstyle in ("format", "pyformat") else "?"
    cols = ("seq", "prev_hash", "hash", *HASHED)
    sql = f"INSERT INTO audit_events ({', '.join(cols)}) VALUES ({', '.join([ph] * len(cols))})"
    kinds = [AuditEventType.STUDY_ACCESSED.value] * 6 + [AuditEventType.LOGIN_SUCCESS.value] * 2 + [
        AuditEventType.ACCESS_DENIED.value, AuditEventType.STUDY_DOWNLOADED.value]
    seq = 0
    with db.write_transaction(eng) as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for start in range(0, records, 50_000):
            batch = []
            for i in range(start, min(records, start + 50_000)):
                seq += 1
                uid = uids[rnd.randrange(len(uids))]
                kind = kinds[i % len(kinds)]
                when = format_time(now - dt.timedelta(seconds=rnd.randrange(200 * 86400)))
                own = scoped.get(uid)
                inside = own and rnd.random() > 0.001
                dept = own[rnd.randrange(len(own))] if inside else DEPTS[rnd.randrange(len(DEPTS))]
                body: dict[str, Any] = {"details": {"pacs": "orthanc", "requests": 1, "departments": [dept]},
                                        "objects": [{"id": f"1.2.3.{i}", "kind": "study"}]}
                if i % 100_000 == 0:
                    kind = AuditEventType.ROLE_ASSIGNED.value
                    body = {"details": {"source": "keycloak-admin", "by_bridge_sync": False},
                            "objects": [{"id": uid, "kind": "user"}, {"id": "role00", "kind": "role"}]}
                values = {"event_id": str(uuid.UUID(int=rnd.getrandbits(128))), "time": when, "type": kind,
                          "outcome": 4 if kind == AuditEventType.ACCESS_DENIED.value else 0,
                          "actor_user": f"{uid}@{ISS}", "actor_username": snap.users[uid].username,
                          "client_id": "pacs-gateway", "network_address": "10.0.0.1", "patient_id": f"P{i % 5000}",
                          "study_uid": f"1.2.3.{i}", "correlation_id": None,
                          "body": json.dumps(body, separators=(",", ":"), sort_keys=True)}
                batch.append((seq, "0" * 64, f"{seq:064x}", *[values[k] for k in HASHED]))
            cur.executemany(sql, batch)
        cur.execute(f"UPDATE audit_head SET last_seq = {ph}, last_hash = {ph} WHERE id = 1", (seq, f"{seq:064x}"))
        cur.close()
    eng.dispose()
    return {"assignments": len(rows), "records": records, "fill_seconds": round(time.perf_counter() - t0, 1)}


def _reset_campaigns(url: str) -> None:
    """A reused corpus: forget earlier runs' campaigns (the review itself reads nothing of them but
    the start of the last one, which would shorten the window of console changes)."""
    from sqlalchemy import delete

    from bridge.store.models import ReviewCampaign, ReviewItem, ReviewReviewer, ReviewUser

    db.migrate(url)
    eng = db.engine(url)
    with db.session(eng) as s:
        for model in (ReviewCampaign, ReviewItem, ReviewReviewer, ReviewUser):
            s.execute(delete(model))
    eng.dispose()


def review_child(url: str, users: int, groups: int) -> dict[str, Any]:
    """Run in a fresh process: the review and the campaign, timed, with this process's peak RSS."""
    from bridge.review import campaign
    from bridge.review.run import compute

    snap, policy = corpus(users, groups)
    eng = db.engine(url)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    review = compute(eng, snap, policy, issuer=ISS, keycloak=None, dormant_days=90)
    t1 = time.perf_counter()
    cid = campaign.start(eng, review, started_by="bench", deadline_days=14)
    t2 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    s = review.summary()
    return {"campaign": cid, "review_seconds": round(t1 - t0, 2), "campaign_store_seconds": round(t2 - t1, 2),
            "cpu_seconds": round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 2),
            "total_seconds": round(t2 - t0, 2), "users_reviewed": s["users"], "items": s["items"],
            "flags": s["flags"], "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_review_mb": round(rss_before / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=500)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--url", default=None, help="a store URL (default: SQLite in a temp dir)")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--db", default=None, help="a SQLite file to keep the corpus in (reused when it exists)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(review_child(args.child, args.users, args.groups)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        url = args.url or f"sqlite:///{args.db or d + '/bench.db'}"
        snap, policy = corpus(args.users, args.groups)
        out: dict[str, Any] = {"backend": url.split(":")[0], "users": args.users, "groups": args.groups}
        if args.db and Path(args.db).exists():
            out["corpus"] = f"reused {args.db}"
            _reset_campaigns(url)
        else:
            out.update(fill(url, snap, policy, args.records))
        child = subprocess.run([sys.executable, __file__, "--child", url, "--users", str(args.users),
                                "--groups", str(args.groups)], capture_output=True, text=True, check=True)
        out.update(json.loads(child.stdout.strip().splitlines()[-1]))
        out["targets"] = {"seconds": 10, "rss_mb": 500,
                          "met": out["total_seconds"] < 10 and out["peak_rss_mb"] < 500}
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        out["cpus"] = os.cpu_count()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
