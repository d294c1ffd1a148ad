"""Two bridge instances behind HAProxy on one PostgreSQL: throughput with two instances and with
one, and what a SIGKILL of one instance under load costs.

Uses the running dev stack (or brings up the part it needs and stops it again): HAProxy,
``bridge`` and ``bridge2``, PostgreSQL, Keycloak and Samba AD (the MFA logins whose Keycloak
tokens are exchanged).  Load: devstack/pacs_devstack/ha_load.py (token exchange 65 %, JWKS 20 %,
introspection 10 %, audit intake 5 %), loopback only, bounded by ``--seconds`` and
``--max-requests`` per phase.  Phases:

1. ``two``: both instances up;
2. ``failover``: ``bridge2`` is SIGKILLed ``--kill-at`` seconds in; failures (no answer or 5xx)
   are counted in the second it dies and after;
3. ``one``: ``bridge2`` still down;

then ``bridge2`` is started again.  Afterwards the audit chain is verified and every
acknowledged event (intake answered 202, exchange answered 200) is looked up in the trail.
Prints one JSON object; ``os.getloadavg()`` is in it because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bridge.core.audit_events import format_time, utcnow
from pacs_devstack import ha_load, state
from pacs_devstack.bridge import SECOND
from pacs_devstack.haproxy import SERVICE as HAPROXY
from pacs_devstack.service import StackContext

NEEDED = ("keycloak", "samba", "rsyslog", "postgres", "bridge", "bridge2", "haproxy")
USERS = ("card.kara", "er.nina", "tech.yara")


def _logins(info: dict[str, Any]) -> list[str]:
    from pacs_devstack import demo_data
    from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp

    login = BrowserlessLogin(info["keycloak"]["url"], "hospital", "pacs-viewer",
                             "https://127.0.0.1:9443/viewer/oidc/callback", ca_file=info["ca"]["file"])
    out = []
    for name in USERS:
        u = demo_data.user(name)
        out.append(login.login(name, str(u["password"]), otp=fresh_totp(u["totp_secret"], f"hospital/{name}"))
                   .access_token)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.audit.store import open_store
    from bridge.config import load_config
    from bridge.store.db import engine

    info = state.read_stack()
    ctx = StackContext(ca_file=Path(info["ca"]["file"]))
    ctx.info.update(info)
    settings = load_config(info["bridge"]["config"])
    target = ha_load.Target(
        info["haproxy"]["url"], info["ca"]["file"], _logins(info),
        introspect_auth=(info["bridge"]["tools_client_id"], ctx.secret(info["bridge"]["tools_client_secret"])),
        ingest_token=ctx.secret(info["bridge"]["audit_ingest_secret"]),
        correlation_id=f"bench-ha-{int(time.time())}",
    )
    since = format_time(utcnow())
    kw = {"threads": args.threads, "seconds": args.seconds, "max_requests": args.max_requests}
    out: dict[str, Any] = {"bench": "ha", "threads": args.threads, "seconds_per_phase": args.seconds,
                           "mix": dict(ha_load.MIX)}

    HAPROXY.wait_states({"bridge": "UP", "bridge2": "UP"}, timeout=30)
    two = ha_load.drive(target, **kw)
    killed: list[float] = []

    def kill(elapsed: float) -> None:
        if elapsed >= args.kill_at and not killed:
            killed.append(time.monotonic())
            SECOND.kill()

    failover = ha_load.drive(target, during=kill, **kw)
    HAPROXY.wait_states({"bridge": "UP", "bridge2": "DOWN"}, timeout=30)
    one = ha_load.drive(target, **kw)
    t0 = time.monotonic()
    SECOND.start(ctx)
    SECOND.wait_ready(ctx)
    HAPROXY.wait_states({"bridge": "UP", "bridge2": "UP"}, timeout=30)
    out["bridge2_back_up_s"] = round(time.monotonic() - t0, 1)

    k = killed[0] if killed else float("inf")
    out["two_instances"] = ha_load.summary(two)
    out["one_instance"] = ha_load.summary(one)
    out["speedup_two_vs_one"] = round(out["two_instances"]["rps"] / max(out["one_instance"]["rps"], 1e-6), 2)
    out["failover"] = {
        "before_kill": ha_load.summary([x for x in failover if x.start + x.ms / 1000 < k]),
        "in_flight_at_kill": ha_load.in_flight(failover, k),
        # sent in the second after the SIGKILL
        "second_of_kill": ha_load.summary(failover, since=k, until=k + 1.0),
        # the same second, counting also what was in flight at the kill (the strict view)
        "second_of_kill_with_in_flight": ha_load.summary(failover, since=k, until=k + 1.0, overlapping=True),
        "after": ha_load.summary(failover, since=k + 1.0),
    }
    out["failover_error_rate_second_of_kill"] = out["failover"]["second_of_kill"]["failure_rate"]
    out["failover_error_rate_second_of_kill_with_in_flight"] = (
        out["failover"]["second_of_kill_with_in_flight"]["failure_rate"])
    out["failover_errors_after"] = out["failover"]["after"]["failed"]

    time.sleep(2.0)  # the survivors' queued token events reach the trail (flushed every 0.25 s)
    eng = engine(settings.store.url)
    store = open_store(settings, eng, signing=False)
    report = store.verify()
    out["audit_chain_verified"] = bool(report.ok)
    out["audit_records"] = report.records
    missing = ha_load.missing_acknowledged(eng, two + failover + one, since)
    out["acknowledged_events_missing"] = missing["intake"]
    out["acknowledged"] = missing
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    out["targets"] = {"second_of_kill_failure_rate_below": 0.01, "failures_after": 0}
    out["ok"] = (out["failover_error_rate_second_of_kill"] < 0.01 and out["failover_errors_after"] == 0
                 and out["audit_chain_verified"] and out["acknowledged_events_missing"] == 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase (default 8)")
    parser.add_argument("--max-requests", type=int, default=40_000, help="cap per phase (default 40000)")
    parser.add_argument("--kill-at", type=float, default=3.0, help="second of the SIGKILL in the failover phase")
    args = parser.parse_args()
    from pacs_devstack import stack as devstack

    before = devstack.status()
    started = not all(before.get(n) for n in NEEDED)
    if started:
        devstack.up(NEEDED, owner="bench", log=lambda m: print(m, file=sys.stderr))
    try:
        result = run(args)
    finally:
        if started:
            devstack.down(owner="bench", log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
