"""Shared unit-test fixtures: a tiny in-memory directory for policy and sync tests (no server)."""

from __future__ import annotations

import pytest

from bridge.directory.model import DirectoryGroup, DirectorySnapshot, DirectoryUser

BASE = "OU=Groups,DC=h,DC=t"


def make_snapshot(users: dict[str, tuple[str, ...]], disabled: set[str] = frozenset(),  # type: ignore[assignment]
                  extra_groups: tuple[str, ...] = ()) -> DirectorySnapshot:
    """users: username -> effective group CNs (group id = 'g-' + cn, DN under OU=Groups)."""
    groups: dict[str, DirectoryGroup] = {}
    for cn in {g for gs in users.values() for g in gs} | set(extra_groups):
        ou = "External" if cn.startswith("ext/") else "Int"
        name = cn.split("/")[-1]
        groups[f"g-{cn}"] = DirectoryGroup(f"g-{cn}", f"CN={name},OU={ou},{BASE}", name)
    us = {f"u-{n}": DirectoryUser(f"u-{n}", f"CN={n},OU=Staff,DC=h,DC=t", n, disabled=n in disabled)
          for n in users}
    mem = {f"u-{n}": frozenset(f"g-{g}" for g in gs) for n, gs in users.items()}
    return DirectorySnapshot(us, groups, mem)


@pytest.fixture
def snapshot_factory():  # type: ignore[no-untyped-def]
    return make_snapshot


@pytest.fixture(autouse=True)
def _no_checkpoint_key_in_the_checkout(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A unit test must keep the audit checkpoint key in its tmp_path: the default path is the checkout's
    var/, where a key encrypted under one test's random KEK breaks the next test (and a clean clone's run
    depends on test order)."""
    from pathlib import Path

    key = Path("var/audit-checkpoint.key")
    existed = key.exists()
    yield
    if not existed and key.exists():
        key.unlink()
        Path("var/audit-checkpoint.key.pub").unlink(missing_ok=True)
        pytest.fail(f"{request.node.nodeid} wrote {key} in the checkout: set audit.checkpoint_key_file under tmp_path")
