"""One sync run: read -> desired -> actual -> plan -> gate -> apply, with history, audit and lock.

Why every run recomputes the plan from scratch: a failure (one user in Keycloak, a target down)
needs no retry queue; the next run sees the same difference and tries again.  Idempotence follows:
after a successful apply the diff is empty.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.directory.model import DirectorySnapshot, DirectoryUnavailable
from bridge.directory.reader import DirectoryReader
from bridge.errors import UnavailableError
from bridge.policy.model import Policy
from bridge.store import lease
from bridge.store.db import session, write_session
from bridge.store.models import SyncRun, utcnow
from bridge.sync.desired import desired_state, withhold
from bridge.sync.model import ActualState, Change, DesiredState, Leaver, Plan
from bridge.sync.plan import make_plan
from bridge.sync.safety import GateResult, Thresholds, check
from bridge.sync.targets.base import ApplyResult, Target, TargetError
from bridge.sync.targets.store import StoreTarget

log = logging.getLogger(__name__)
LOCK_NAME = "directory-sync"
BRIDGE = ev.Actor(client_id="pacs-sso-bridge", is_requestor=False)


@dataclass
class RunReport:
    """What a run did; also what `sync --apply --json` prints and what sync_runs stores."""

    status: str  # ok | partial | failed | threshold_stop | dry_run | unchanged | locked
    mode: str
    plan: Plan | None = None
    gate: GateResult | None = None
    results: list[ApplyResult] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    duration: float = 0.0
    run_id: int | None = None

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.plan.counts()) if self.plan else {}
        if self.plan:
            out["directory_users"] = self.plan.directory.get("users", 0)
        for r in self.results:
            out[f"{r.target}.added"] = r.added
            out[f"{r.target}.removed"] = r.removed
            out[f"{r.target}.roles_created"] = r.roles_created
            out[f"{r.target}.leavers"] = r.leavers
            out[f"{r.target}.failures"] = len(r.failures)
        return out


class SyncRunner:
    """Holds what survives between scheduled runs: the last snapshot (for incremental reads)."""

    def __init__(self, reader: DirectoryReader, policy: Policy, targets: list[Target], engine: Engine, *,
                 thresholds: Thresholds | None = None, audit: Any | None = None,
                 revoke_subject: Callable[[str], Any] | None = None, owner: str | None = None,
                 full_sync_every: int = 60, lock_ttl: float = 900.0):
        self.reader, self.policy, self.targets, self.engine = reader, policy, targets, engine
        self.thresholds, self.audit, self.revoke_subject = thresholds or Thresholds(), audit, revoke_subject
        # host and pid for the operator; the random part keeps two runners in one process (or two
        # containers that share a hostname and pid 1) apart, else each "renews" the other's lease
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.full_sync_every, self.lock_ttl = full_sync_every, lock_ttl
        self.previous: DirectorySnapshot | None = None
        self.runs = 0

    # ------------------------------------------------------------------ audit

    def _audit(self, type_: AuditEventType, outcome: Outcome | None = None, objects: tuple[Any, ...] = (),
               **details: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(ev.AuditEvent(type_, outcome, BRIDGE, objects, details=details))
        except Exception:  # the audit store down must be loud, but must not half-apply a sync
            log.exception("audit append failed for %s", type_)

    # ------------------------------------------------------------------ steps

    def compute(self, *, full: bool = True, progress: Callable[[str], None] | None = None
                ) -> tuple[DirectorySnapshot, DesiredState, dict[str, ActualState], Plan, list[dict[str, str]]]:
        """Read everything and return the plan; changes nothing (but may trigger Keycloak's LDAP sync)."""
        say = progress or (lambda s: None)
        say("reading the directory")
        snap = self.reader.read(self.previous, full=full)
        desired = withhold(desired_state(snap, self.policy), self._review_exceptions())
        actuals: dict[str, ActualState] = {}
        errors: list[dict[str, str]] = []
        for t in self.targets:
            say(f"reading {t.name}")
            try:
                t.prepare(full=full)
                actuals[t.name] = t.read(desired)
            except TargetError as exc:
                errors.append({"target": t.name, "error": str(exc)})
        return snap, desired, actuals, make_plan(desired, actuals, snap.summary()), errors

    def _review_exceptions(self) -> dict[tuple[str, str], Any]:
        """Assignments revoked in an access review (bridge/review/exceptions.py), applied on every run."""
        from sqlalchemy import inspect
        from sqlalchemy.exc import DBAPIError

        from bridge.review import exceptions

        try:
            if not inspect(self.engine).has_table("review_exceptions"):
                # a store migrated before the review tables: no review ran, no exception exists
                log.warning("sync: the store has no review tables (run `pacs-bridge db upgrade`); "
                            "no review exception applied")
                return {}
            return dict(exceptions.by_key(self.engine))
        except DBAPIError as exc:
            # never plan without them: a locked or dropped database would give back every role a
            # reviewer revoked; the run fails and the next one retries
            raise UnavailableError(f"sync: cannot read the access review's exceptions ({type(exc).__name__}); "
                                   "nothing applied") from None

    def _previous_users(self) -> int | None:
        with session(self.engine) as s:
            row = s.execute(select(SyncRun.counts).where(SyncRun.status.in_(("ok", "partial")))
                            .order_by(SyncRun.id.desc()).limit(1)).first()
        return int(row[0].get("directory_users", 0)) or None if row and row[0] else None

    def run(self, *, apply: bool, allow_deletes: bool = False, full: bool | None = None,
            progress: Callable[[str], None] | None = None,
            step: Callable[[int], None] | None = None) -> RunReport:
        """One run.  ``full=None``: every ``full_sync_every``-th run is full, others incremental."""
        self.runs += 1
        if full is None:
            full = self.previous is None or (self.runs - 1) % self.full_sync_every == 0
        mode = "full" if full else "delta"
        t0 = time.monotonic()
        if apply and not lease.acquire(self.engine, LOCK_NAME, self.owner, self.lock_ttl):
            holder = lease.holder(self.engine, LOCK_NAME)
            return RunReport("locked", mode, errors=[{"error": f"another sync holds the lock: {holder}"}])
        if not apply:
            return self._run(apply, allow_deletes, full, mode, t0, progress, step)
        # a run may outlast the lease (a slow directory, thousands of Keycloak calls): keep renewing
        # it, so that another replica never starts a second run next to this one
        keeper = lease.Keeper(self.engine, LOCK_NAME, self.owner, self.lock_ttl)
        try:
            with keeper:
                report = self._run(apply, allow_deletes, full, mode, t0, progress, step, keeper)
            return report
        finally:
            lease.release(self.engine, LOCK_NAME, self.owner)

    def _run(self, apply: bool, allow_deletes: bool, full: bool, mode: str, t0: float,
             progress: Callable[[str], None] | None, step: Callable[[int], None] | None,
             keeper: lease.Keeper | None = None) -> RunReport:
        with session(self.engine) as s:
            row = SyncRun(status="running", mode=mode, owner=self.owner, counts={}, errors=[])
            s.add(row)
            s.flush()
            run_id = row.id
        if apply:
            self._audit(AuditEventType.SYNC_STARTED, mode=mode, run_id=run_id)
        report = RunReport("running", mode, run_id=run_id)
        try:
            previous = self.previous
            try:
                snap, desired, _actuals, plan, errors = self.compute(full=full, progress=progress)
            except DirectoryUnavailable as exc:
                report.status, report.errors = "failed", [{"error": f"directory unavailable: {exc}"}]
                return report
            except UnavailableError as exc:  # the review's exceptions unreadable: never plan without them
                report.status, report.errors = "failed", [{"error": str(exc)}]
                return report
            report.plan, report.errors = plan, errors
            if snap is previous and not full:
                report.status = "unchanged"
                return report
            report.gate = check(plan, self.thresholds, previous_users=self._previous_users(),
                                allow_deletes=allow_deletes)
            if not report.gate.ok:
                report.status = "threshold_stop"
                if apply:
                    self._audit(AuditEventType.SYNC_THRESHOLD_STOP, None, (ev.ParticipantObject(
                        ev.ObjectKind.CONFIG, "sync.deletion_threshold"),), reasons=list(report.gate.reasons),
                        counts=plan.counts(), run_id=run_id)
                return report
            if not apply:
                report.status = "dry_run"
                return report
            self._apply(report, desired, plan, step, keeper)
            self.previous = snap
            report.status = "partial" if report.errors or any(r.failures for r in report.results) else "ok"
            return report
        finally:
            report.duration = time.monotonic() - t0
            if keeper is not None and keeper.lost:
                report.errors.append({"error": "the sync lease was lost during the run (stalled longer "
                                               "than sync lock ttl); another replica may have run too"})
                if report.status == "ok":
                    report.status = "partial"
            self._finish(report, apply)

    def _apply(self, report: RunReport, desired: DesiredState, plan: Plan,
               step: Callable[[int], None] | None, keeper: lease.Keeper | None = None) -> None:
        """Apply the plan target by target.  Fencing: a run that lost its lease (stalled longer
        than the lease; another replica may hold it now) stops before the next target, so it never
        writes next to the new holder from then on.  Token revocations for what was already
        applied still happen: raising a watermark is monotonic and harmless next to another run,
        while skipping it would leave tokens carrying an already-removed role alive (the next run
        sees no change and would never raise it)."""
        leavers: dict[str, Leaver] = {}
        narrowed: dict[str, Change] = {}  # subjects that lost a role, first removal kept for the audit
        for tplan in plan.targets:
            if self._lease_lost(report, keeper, f"target {tplan.target}"):
                break
            target = next(t for t in self.targets if t.name == tplan.target)
            res = target.apply(tplan, desired, step)
            report.results.append(res)
            if isinstance(target, StoreTarget):
                target.refresh(desired)
            for kind, c in res.applied:
                objs = (ev.user(c.user_id, c.username), ev.role(c.role))
                if kind == "add":
                    self._audit(AuditEventType.ROLE_ASSIGNED, None,
                                (*objs, ev.group(c.group_dn), ev.rule(c.rule_id)), target=res.target)
                else:
                    self._audit(AuditEventType.ROLE_REMOVED, None, objs, target=res.target, reason=c.reason)
                    narrowed.setdefault(c.user_id, c)
            failed = {f["user"] for f in res.failures}
            for lv in tplan.leavers:
                if lv.username not in failed:
                    leavers.setdefault(lv.user_id, lv)
        for lv in leavers.values():
            self._revoke_tokens(report, lv.user_id, lv.username, f"leaver ({lv.reason})")
        for uid, c in narrowed.items():
            if uid not in leavers:
                self._revoke_tokens(report, uid, c.username, f"role removed ({c.role}: {c.reason})")

    @staticmethod
    def _lease_lost(report: RunReport, keeper: lease.Keeper | None, before: str) -> bool:
        if keeper is None or not keeper.lost:
            return False
        report.errors.append({"error": f"the sync lease was lost; stopped before {before}"})
        return True

    def _revoke_tokens(self, report: RunReport, user_id: str, username: str, reason: str) -> None:
        """Raise the subject's revocation watermark: every PACS token issued so far dies at the PACS
        (``/revocations``) and Keycloak tokens issued so far can no longer be exchanged.

        For a leaver *and* for any role removal: a token issued before the removal still carries
        the removed role (and its permissions) until it expires; the watermark is the only way to
        take that back.  Called after the targets applied the removal, so a token issued after
        the watermark is issued from the narrowed assignments."""
        if self.revoke_subject is None:
            return
        try:
            self.revoke_subject(user_id)
            self._audit(AuditEventType.TOKEN_REVOKED, None, (ev.user(user_id, username),), reason=reason)
        except Exception as exc:
            report.errors.append({"user": username, "error": f"token revocation failed: {exc}"})

    def _finish(self, report: RunReport, apply: bool) -> None:
        errors = list(report.errors) + [f for r in report.results for f in r.failures]
        if report.gate and not report.gate.ok:
            errors += [{"error": r} for r in report.gate.reasons]
        with write_session(self.engine) as s:  # read-then-write: take SQLite's write lock first
            row = s.get(SyncRun, report.run_id)
            if row is not None:
                row.status, row.finished_at = report.status, utcnow()
                row.counts = {**report.counts(), "duration_s": round(report.duration, 3)}
                row.errors = errors[:200]
        if apply:
            outcome = Outcome.SUCCESS if report.status in ("ok", "unchanged") else (
                Outcome.MINOR_FAILURE if report.status == "partial" else Outcome.SERIOUS_FAILURE)
            self._audit(AuditEventType.SYNC_FINISHED, outcome, status=report.status, mode=report.mode,
                        counts=report.counts(), errors=len(errors), run_id=report.run_id)
        try:
            from bridge.sync import metrics

            metrics.observe(report)
        except Exception:  # metrics must never break a sync
            log.debug("metrics update failed", exc_info=True)


def history(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    with session(engine) as s:
        rows = s.scalars(select(SyncRun).order_by(SyncRun.id.desc()).limit(limit)).all()
        return [{"id": r.id, "started_at": r.started_at.isoformat(timespec="seconds"),
                 "finished_at": r.finished_at.isoformat(timespec="seconds") if r.finished_at else None,
                 "status": r.status, "mode": r.mode, "owner": r.owner, "counts": r.counts,
                 "errors": r.errors} for r in rows]
