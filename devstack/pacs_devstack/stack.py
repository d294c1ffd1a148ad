"""Bring the whole dev stack up or down: the one code path behind `make demo`, the pytest session
fixture and `pacs-bridge devstack up|down|status`.

Keycloak is listed first so it starts as early as possible: it is by far the slowest (30-90 s on
two cores).  A service with `needs` (Keycloak needs slapd's dynamic port for its realm import)
starts as soon as those are ready, and seeds after them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from pacs_devstack import install, state
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.tls import ensure_ca

#: every service, in start order (each module defines `SERVICE`)
ALL = ("keycloak", "samba", "slapd", "redis", "bridge", "bridge2", "haproxy", "orthanc", "scim", "postgres", "rsyslog")
#: services that are not their module's `SERVICE`: name -> (module, attribute)
_DEFINED_IN = {"bridge2": ("bridge", "SECOND")}


def service(name: str) -> Service:
    if name not in ALL:
        raise DevstackError(f"unknown dev stack service {name!r}; known: {', '.join(ALL)}")
    module, attr = _DEFINED_IN.get(name, (name, "SERVICE"))
    return getattr(importlib.import_module(f"pacs_devstack.{module}"), attr)  # type: ignore[no-any-return]


def _selected(names: Iterable[str] | None) -> list[Service]:
    wanted = list(names) if names else list(ALL)
    return [service(n) for n in ALL if n in wanted]


def up(names: Iterable[str] | None = None, *, seed: bool = True, owner: str = "cli",
       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Install, start, wait for and seed the selected services; return the stack info."""
    t0 = time.monotonic()
    services = _selected(names)
    ctx = StackContext(ca_file=ensure_ca())
    ctx.info.update(state.read_stack())
    ctx.info["ca"] = {"file": str(ctx.ca_file)}
    # which services make up this stack, before anything starts: the bridge's public URL is
    # HAProxy's only when HAProxy runs (devstack/pacs_devstack/front.py), and Keycloak needs it first
    if not any(s.running() for s in services):
        state.update_stack(state.SELECTION, {"services": [s.name for s in services]})

    packages = sorted({p for s in services for p in s.apt_packages})
    if packages:
        install.apt_install(packages)
    for s in services:
        s.install()

    started: list[Service] = []
    selected = {s.name for s in services}
    ready: set[str] = set()
    to_launch: list[Service] = []
    for s in services:
        if s.running():
            log(f"{s.name}: already running")
        else:
            to_launch.append(s)

    def launch_unblocked(force: bool = False) -> None:
        # a service whose `needs` are in this run starts only once they are ready (Keycloak's
        # realm import needs slapd's port)
        for s in list(to_launch):
            if not force and any(n in selected and n not in ready for n in s.needs):
                continue
            log(f"{s.name}: starting")
            s.prepare(ctx)
            s.start(ctx)
            started.append(s)
            to_launch.remove(s)

    try:
        launch_unblocked()
        pending = list(services)
        while pending:
            # wait first for what a not-yet-started service needs, so it starts early
            needed = {n for x in to_launch for n in x.needs}
            waitable = [x for x in pending if x not in to_launch]
            s = next((x for x in waitable if x.name in needed), waitable[0] if waitable else None)
            if s is None:  # only blocked ones left (cannot happen without a cycle): start them now
                launch_unblocked(force=True)
                continue
            ctx.info[s.name] = s.wait_ready(ctx)
            state.update_stack(s.name, ctx.info[s.name])
            ready.add(s.name)
            pending.remove(s)
            log(f"{s.name}: ready ({time.monotonic() - t0:.1f} s)")
            launch_unblocked()
        if seed:
            # services that need others seed after them (Keycloak syncs the seeded directories)
            for s in sorted(services, key=lambda x: bool(x.needs)):
                if s in started:
                    s.seed(ctx)
        state.update_stack("ca", ctx.info["ca"])
        if started or "owner" not in state.read_stack():
            state.update_stack("owner", {"name": owner, "since": time.time()})
    except BaseException:
        for s in reversed(started):
            s.stop()
        raise
    log(f"dev stack up in {time.monotonic() - t0:.1f} s")
    return state.read_stack()


def down(names: Iterable[str] | None = None, *, owner: str | None = None,
         log: Callable[[str], None] = print) -> None:
    """Stop exactly the processes the stack recorded (also after a crash of whoever started them).

    With `owner`, stop only if that owner started the stack: `make test` never stops a demo.
    """
    if owner is not None and state.read_stack().get("owner", {}).get("name") != owner:
        return
    for s in reversed(_selected(names)):
        if s.stop():
            log(f"{s.name}: stopped")
    data = state.read_stack()
    for s in _selected(names):
        data.pop(s.name, None)
    if not any(service(n).running() for n in ALL):
        data.pop("owner", None)
        data.pop(state.SELECTION, None)
    state.write_stack(data)


def status() -> dict[str, bool]:
    return {name: service(name).running() for name in ALL}
