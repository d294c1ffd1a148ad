"""The root-run PostgreSQL cluster belongs to one state-dir instance, not to its path.

A CI workspace is cloned afresh at the same path run after run; each clone has fresh secrets (a
new key-encryption key), so a cluster found by path alone would carry the last run's signing keys,
encrypted under a key nobody has any more, and every integration test would fail at setup."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pacs_devstack import postgres


@pytest.fixture()
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    if os.geteuid() != 0:
        pytest.skip("the /var/tmp folder is used only when the stack runs as root")  # unit: pure logic
    work_root = tmp_path / "var-tmp"
    work_root.mkdir()
    monkeypatch.setattr(postgres, "WORK_ROOT", work_root)
    state = tmp_path / "clone" / ".devstack"
    monkeypatch.setenv("PACS_BRIDGE_DEVSTACK_DIR", str(state))
    return work_root, state


def test_a_fresh_state_dir_at_the_same_path_gets_a_fresh_cluster(roots: tuple[Path, Path]) -> None:
    work_root, state = roots
    first = postgres.PostgresService().work
    (first / "data").mkdir()
    (first / "data" / "PG_VERSION").write_text("15\n")
    assert postgres.PostgresService().work == first  # the same instance keeps its cluster

    shutil.rmtree(state.parent)  # the next CI run: a clean clone at the same path
    second = postgres.PostgresService().work
    assert second != first
    assert not (second / "data" / "PG_VERSION").exists()
    assert not first.exists(), "the earlier instance's cluster is removed"
    assert sorted(p.name for p in work_root.iterdir()) == [second.name]


def test_other_state_dirs_and_running_servers_are_left_alone(
        roots: tuple[Path, Path], tmp_path: Path) -> None:
    work_root, state = roots
    other = work_root / f"{postgres.WORK_PREFIX}someoneelse"
    other.mkdir()
    (other / postgres.OWNER_FILE).write_text(str(tmp_path / "elsewhere" / ".devstack"))
    legacy = work_root / f"{postgres.WORK_PREFIX}0123456789ab"  # an old folder without owner record
    legacy.mkdir()
    first = postgres.PostgresService().work
    (first / "data").mkdir()
    (first / "data" / "postmaster.pid").write_text(f"{os.getpid()}\n")  # "still running"

    shutil.rmtree(state.parent)
    second = postgres.PostgresService().work
    assert {p.name for p in work_root.iterdir()} == {other.name, legacy.name, first.name, second.name}
