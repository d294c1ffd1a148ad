"""Helpers of the high-availability and fault tests: stop and restart the stack's real servers
through the dev stack's own process control, and bring them back whatever happens."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacs_devstack import process, state
from pacs_devstack import stack as devstack
from pacs_devstack.service import StackContext

#: what a restarted server must do again after `wait_ready` (Keycloak's database is in memory)
_RESEED = {"keycloak"}


def need(stack: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in stack]
    if missing:
        pytest.skip(f"dev stack runs without {', '.join(missing)} (PACS_BRIDGE_DEVSTACK_ONLY)")


def context(stack: dict[str, Any]) -> StackContext:
    ctx = StackContext(ca_file=Path(stack["ca"]["file"]))
    ctx.info.update(state.read_stack())
    return ctx


def stop(name: str) -> None:
    """Stop a server the way `down` does, but keep its port and configuration for the restart."""
    svc = devstack.service(name)
    if name == "postgres":
        svc.stop()  # its fast shutdown (SIGINT); keeps its port file
    else:
        process.stop(name)  # the bridge's and HAProxy's own stop() would forget their ports
    assert not svc.running(), f"{name} still running"


def start(name: str, stack: dict[str, Any]) -> float:
    """Start a stopped server again on its old port and wait until it is ready; seconds taken."""
    t0 = time.monotonic()
    svc = devstack.service(name)
    if svc.running():
        return 0.0
    ctx = context(stack)
    svc.start(ctx)
    info = svc.wait_ready(ctx)
    state.update_stack(name, info)
    ctx.info[name] = info
    if name in _RESEED:
        svc.seed(ctx)
    return time.monotonic() - t0


@contextlib.contextmanager
def restored(stack: dict[str, Any], *names: str) -> Iterator[None]:
    """Whatever the test does to ``names``, they run and are ready again afterwards (the rest of
    the suite shares this stack)."""
    try:
        yield
    finally:
        errors = []
        for name in names:
            try:
                start(name, stack)
            except Exception as exc:  # try the others, then fail loudly
                errors.append(f"{name}: {exc}")
        assert not errors, "could not restore the stack: " + "; ".join(errors)


def mfa_tokens(stack: dict[str, Any], usernames: tuple[str, ...]) -> list[str]:
    """Keycloak access tokens of real MFA logins (password + TOTP) through the pacs-viewer client."""
    from pacs_devstack import demo_data
    from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp

    login = BrowserlessLogin(stack["keycloak"]["url"], "hospital", "pacs-viewer",
                             "https://127.0.0.1:9443/viewer/oidc/callback", ca_file=stack["ca"]["file"])
    out = []
    for name in usernames:
        user = demo_data.user(name)
        out.append(login.login(name, str(user["password"]),
                               otp=fresh_totp(user["totp_secret"], f"hospital/{name}")).access_token)
    return out


def tools_auth(stack: dict[str, Any]) -> tuple[str, str]:
    b = stack["bridge"]
    return b["tools_client_id"], context(stack).secret(b["tools_client_secret"])


def wait_states(want: dict[str, str], timeout: float = 20.0) -> dict[str, str]:
    """Wait until HAProxy reports each instance in the wanted state ("UP", "DOWN")."""
    from pacs_devstack.haproxy import SERVICE as HAPROXY

    return HAPROXY.wait_states(want, timeout)


def private_schema(stack: dict[str, Any]) -> contextlib.AbstractContextManager[str]:
    """A migrated private schema in the stack's PostgreSQL (the database is shared); its URL."""
    from pacs_devstack.postgres import private_schema as schema

    return schema(stack, "ha")


def samba_section(stack: dict[str, Any]) -> Any:
    from bridge.config import DirectorySection

    info = stack["samba"]
    return DirectorySection(
        kind="ad", url=info["ldaps_url"], bind_dn=info["bind_dn"],
        bind_password=context(stack).secret(info["bind_password_secret"]), base_dn=info["base_dn"],
        users_dn=info["users_dn"], groups_dn=info["groups_dn"], ca_file=Path(stack["ca"]["file"]))


def sync_runner(stack: dict[str, Any], url: str, owner: str, *, lock_ttl: float = 900.0) -> Any:
    """A real sync (Samba AD -> the bridge's own assignment store) on ``url``."""
    from bridge.audit.store import AuditStore
    from bridge.directory.reader import reader_for
    from bridge.policy.loader import load_policy
    from bridge.store.db import engine
    from bridge.sync.runner import SyncRunner
    from bridge.sync.safety import Thresholds
    from bridge.sync.targets.store import StoreTarget

    eng = engine(url)
    policy = load_policy(Path(__file__).parents[3] / "examples" / "policy.yaml")
    return SyncRunner(reader_for(samba_section(stack)), policy, [StoreTarget(eng)], eng, owner=owner,
                      lock_ttl=lock_ttl, thresholds=Thresholds(500, 10), audit=AuditStore(eng))
