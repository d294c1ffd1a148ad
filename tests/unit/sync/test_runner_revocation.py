"""The sync raises a subject's revocation watermark for any role it removes (not only for leavers),
after the store no longer holds the role: a PACS token issued before the removal dies at the PACS,
one issued after it does not carry the role.  Store target on SQLite, directory in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from bridge.directory.model import DirectorySnapshot
from bridge.policy.loader import parse_policy
from bridge.store.db import engine, migrate, session
from bridge.store.models import RoleAssignment
from bridge.sync.factory import revoke_subject_hook
from bridge.sync.runner import SyncRunner
from bridge.sync.safety import Thresholds
from bridge.sync.targets.store import StoreTarget
from bridge.tokens.store import SqlRevocationStore

POLICY = parse_policy("""
roles:
  reader: {description: r, permissions: [view]}
  admin: {description: a, permissions: [admin]}
rules:
  - {id: readers, group: {dn: "CN=Readers,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [reader]}
  - {id: admins, group: {dn: "CN=Admins,OU=Int,OU=Groups,DC=h,DC=t"}, roles: [admin]}
""")


class Reader:
    """A directory that returns whatever snapshot the test set last."""

    def __init__(self, snap: DirectorySnapshot):
        self.snap = snap

    def read(self, previous: Any = None, *, full: bool = True) -> DirectorySnapshot:
        return self.snap


def roles(eng: Any, user_id: str) -> set[str]:
    with session(eng) as s:
        return set(s.scalars(select(RoleAssignment.role).where(RoleAssignment.subject_id == user_id)))


def test_role_removal_raises_the_watermark_of_that_subject_only(tmp_path: Path, snapshot_factory: Any) -> None:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    eng = engine(url)
    reader = Reader(snapshot_factory({"ann": ("Readers", "Admins"), "bob": ("Readers",)}))
    revoked: list[tuple[str, set[str]]] = []
    hook = revoke_subject_hook(eng, 3600)

    def revoke(subject: str) -> None:  # records what the store held at that moment
        revoked.append((subject, roles(eng, subject)))
        hook(subject)

    runner = SyncRunner(reader, POLICY, [StoreTarget(eng)], eng, thresholds=Thresholds(100, 100),
                        revoke_subject=revoke)
    assert runner.run(apply=True, full=True).status == "ok"
    assert roles(eng, "u-ann") == {"reader", "admin"} and revoked == []
    # ann leaves the Admins group but stays employed: not a leaver, still a narrowing
    reader.snap = snapshot_factory({"ann": ("Readers",), "bob": ("Readers",)})
    assert runner.run(apply=True, full=True).status == "ok"
    assert revoked == [("u-ann", {"reader"})]  # after the store dropped the role
    marks = SqlRevocationStore(eng, cache_seconds=0).subjects()
    assert set(marks) == {"u-ann"}  # bob untouched
    # an unchanged run raises nothing more
    assert runner.run(apply=True, full=True).status == "ok"
    assert len(revoked) == 1
