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
