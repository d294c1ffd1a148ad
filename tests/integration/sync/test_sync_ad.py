"""The sync against the real Samba AD of the dev stack, into the bridge's own store.

Scenarios of issue 3: joiner, mover, leaver (disabled; deleted), nested group, renamed user keeps
identity and roles, same-named group in another OU grants nothing, threshold stop and
--allow-deletes, directory down before and during a run, idempotent second run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sync_helpers import (
    PACS_USERS_RADIOLOGY,
    RADIOLOGY,
    TECHNOLOGISTS,
    make_runner,
)

from bridge.audit.store import AuditStore
from bridge.directory.model import DirectoryUnavailable
from bridge.directory.reader import ActiveDirectoryReader
from bridge.store.db import session
from bridge.store.models import RoleAssignment, SyncRun
from bridge.sync.safety import Thresholds

pytestmark = pytest.mark.integration


def roles(runner: Any, username: str) -> set[str]:
    with session(runner.engine) as s:
        return set(s.scalars(select(RoleAssignment.role).where(RoleAssignment.username == username)))


def subject(runner: Any, username: str) -> set[str]:
    with session(runner.engine) as s:
        return set(s.scalars(select(RoleAssignment.subject_id).where(RoleAssignment.username == username)))


def test_first_apply_nested_same_name_and_idempotent(ad, db_url) -> None:  # type: ignore[no-untyped-def]
    runner = make_runner(ad, db_url)
    rep = runner.run(apply=True, full=True)
    assert rep.status == "ok", rep.errors
    assert rep.results[0].added >= 50  # the demo directory: 50 assignments (cardiologists hold no clinician role)
    # nested: residents are members of Radiology through Radiology-Residents
    assert roles(runner, "rad.res.eli") == {"radiologist", "radiology-resident", "clinician"}
    # the External PACS-Users grants referring-physician; the Radiology one (same CN) grants nothing
    assert roles(runner, "ref.zoe") == {"referring-physician"}
    # SoD deny: it.ivan is not an auditor; rad.bruno (radiologist + auditor) is warned, keeps both
    assert "auditor" in roles(runner, "rad.bruno") and "radiologist" in roles(runner, "rad.bruno")
    # the disabled account gets nothing
    assert roles(runner, "rad.old.ray") == set()
    again = make_runner(ad, db_url).run(apply=True, full=True)
    assert again.status == "ok" and again.plan is not None and again.plan.empty
    assert sum(r.added + r.removed for r in again.results) == 0
    types = [e["type"] for e in AuditStore(runner.engine).tail(500)]
    assert "role.assigned" in types and "sync.started" in types and "sync.finished" in types


def test_joiner_mover_rename_leaver(ad, db_url, ad_users) -> None:  # type: ignore[no-untyped-def]
    runner = make_runner(ad, db_url)
    assert runner.run(apply=True, full=True).status == "ok"
    name, dn = ad_users.create((RADIOLOGY,))
    other, _ = ad_users.create((PACS_USERS_RADIOLOGY,))

    rep = runner.run(apply=True, full=True)  # joiner
    assert rep.status == "ok"
    assert roles(runner, name) == {"radiologist", "clinician"}
    assert roles(runner, other) == set()  # same-named group in another OU grants nothing
    sid = subject(runner, name)

    ad_users.remove_from(dn, RADIOLOGY)  # mover
    ad_users.add_to(dn, TECHNOLOGISTS)
    rep = runner.run(apply=True, full=True)
    assert roles(runner, name) == {"technologist"}
    assert {(c.role, c.reason) for c in rep.plan.targets[0].removals} == {
        ("radiologist", "no-longer-entitled"), ("clinician", "no-longer-entitled")}

    new_name = name.replace("zz.sync", "zz.ren")  # rename + move of the CN
    dn = ad_users.rename(dn, new_name)
    rep = runner.run(apply=True, full=True)
    assert rep.plan.targets[0].adds == () and rep.plan.targets[0].removals == ()
    assert roles(runner, new_name) == {"technologist"} and subject(runner, new_name) == sid

    ad_users.disable(dn)  # leaver (disabled)
    rep = runner.run(apply=True, full=True)
    assert roles(runner, new_name) == set()
    assert [(lv.username, lv.reason) for lv in rep.plan.targets[0].leavers] == [(new_name, "disabled")]

    third, third_dn = ad_users.create((TECHNOLOGISTS,))
    runner.run(apply=True, full=True)
    assert roles(runner, third) == {"technologist"}
    ad_users.delete(third_dn)  # leaver (deleted)
    rep = runner.run(apply=True, full=True)
    assert roles(runner, third) == set()
    assert [lv.reason for lv in rep.plan.targets[0].leavers] == ["gone"]


def test_incremental_read_reuses_unchanged_snapshot(ad, db_url, ad_users) -> None:  # type: ignore[no-untyped-def]
    runner = make_runner(ad, db_url)
    assert runner.run(apply=True, full=True).status == "ok"
    assert runner.run(apply=True, full=False).status == "unchanged"
    name, _ = ad_users.create((TECHNOLOGISTS,))
    rep = runner.run(apply=True, full=False)
    assert rep.status == "ok" and roles(runner, name) == {"technologist"}


def test_threshold_stop_then_allow_deletes(ad, db_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = make_runner(ad, db_url)
    assert runner.run(apply=True, full=True).status == "ok"
    before = len(roles(runner, "rad.alice"))
    # a policy edit that drops the radiology rule removes ~14 of ~100 assignments (> 10%)
    text = (Path(__file__).parents[3] / "examples" / "policy.yaml").read_text()
    cut = text.replace("  - id: radiology-staff\n", "  - id: radiology-staff-off\n").replace(
        'group: {dn: "CN=Radiology,OU=Radiology,OU=Groups,DC=hospital,DC=test"}',
        'group: {dn: "CN=Nonexistent,OU=Radiology,OU=Groups,DC=hospital,DC=test"}')
    pol = tmp_path / "policy.yaml"
    pol.write_text(cut)
    stopped = make_runner(ad, db_url, policy=pol).run(apply=True, full=True)
    assert stopped.status == "threshold_stop" and "threshold" in stopped.gate.reasons[0]
    assert len(roles(runner, "rad.alice")) == before  # nothing changed
    types = [e["type"] for e in AuditStore(runner.engine).tail(50)]
    assert "sync.threshold_stop" in types
    low = make_runner(ad, db_url, policy=pol, thresholds=Thresholds(5, 100)).run(apply=True, full=True)
    assert low.status == "threshold_stop" and "absolute" in low.gate.reasons[0]
    allowed = make_runner(ad, db_url, policy=pol).run(apply=True, full=True, allow_deletes=True)
    assert allowed.status == "ok" and "radiologist" not in roles(runner, "rad.alice")


def test_directory_down_or_bind_refused_changes_nothing(ad, db_url) -> None:  # type: ignore[no-untyped-def]
    runner = make_runner(ad, db_url)
    assert runner.run(apply=True, full=True).status == "ok"
    n = len(roles(runner, "rad.alice"))
    for bad in (ad.model_copy(update={"url": "ldaps://127.0.0.1:1"}),
                ad.model_copy(update={"bind_password": type(ad.bind_password)("wrong-Passw0rd!")}),
                ad.model_copy(update={"users_dn": "OU=Nowhere,DC=hospital,DC=test"})):
        rep = make_runner(bad, db_url).run(apply=True, full=True)
        assert rep.status == "failed" and "directory unavailable" in rep.errors[0]["error"]
        assert len(roles(runner, "rad.alice")) == n
    with session(runner.engine) as s:
        assert s.scalars(select(SyncRun.status).order_by(SyncRun.id.desc())).first() == "failed"


class _DiesMidRead(ActiveDirectoryReader):
    """The real server, but the connection drops after the first group (a DC going away mid-run)."""

    def _complete_ranges(self, conn, entry):  # type: ignore[no-untyped-def]
        out = super()._complete_ranges(conn, entry)
        conn.unbind()
        return out


def test_directory_down_during_read(ad, db_url) -> None:  # type: ignore[no-untyped-def]
    runner = make_runner(ad, db_url)
    assert runner.run(apply=True, full=True).status == "ok"
    n = len(roles(runner, "rad.alice"))
    broken = make_runner(ad, db_url)
    broken.reader = _DiesMidRead(ad)
    with pytest.raises(DirectoryUnavailable):
        broken.reader.read()
    rep = broken.run(apply=True, full=True)
    assert rep.status == "failed" and len(roles(runner, "rad.alice")) == n
