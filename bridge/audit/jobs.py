"""The audit trail's background work, run by ``pacs-bridge serve`` (bridge/sync/schedule.py).

Four jobs, each a plain function so tests call them directly:

* :func:`ship` moves the records committed since the last run from the database into the syslog
  spool (one file, one fsync per run; the position is kept in ``<spool>/.shipped_seq``) and
  drains the spool to the collector.  Writers (web workers, CLI, sync) do nothing for shipping:
  the database *is* the durable queue, so an append costs no extra disk flush, the order is the
  chain's order, and a record is spooled once.  Only ``serve`` ships.
* :func:`checkpoint` signs the chain head when records were added since the last checkpoint, so
  a quiet hour is covered too (``audit.checkpoint_every`` only fires on busy chains).
* :func:`keycloak_events` pulls the logins that happened inside Keycloak (success, wrong
  password, wrong OTP, logout) through its admin API (bridge/audit/keycloak_events.py), when
  ``audit.keycloak_events`` is on and ``keycloak.admin_password`` is set.
* :func:`keycloak_admin_events` pulls Keycloak's admin events (console changes to roles, users
  and the realm; bridge/audit/keycloak_admin_events.py) at the same interval, when
  ``audit.keycloak_admin_events`` is on and ``keycloak.admin_password`` is set.
* :func:`retention` archives records older than ``audit.retention_days`` to
  ``audit.archive_dir`` (verified first, signed archive checkpoint, then deleted; see
  :meth:`bridge.audit.store.AuditStore.archive`) and records that it did.

:func:`schedule` adds them to an APScheduler scheduler.  The archive job should run on one
replica at a time; it takes the same database lease the sync uses, under its own name.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bridge.audit.chain import row_to_event
from bridge.audit.store import AuditStore
from bridge.audit.syslog import SyslogSender
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind
from bridge.store.models import AuditCheckpoint, AuditHead

log = logging.getLogger(__name__)

ACTOR = ev.Actor(client_id="pacs-bridge-serve")
RETENTION_LEASE = "audit-retention"


SHIP_BATCH = 1000


def ship(store: AuditStore, sender: SyslogSender | None) -> int:
    """Spool the records not shipped yet, then send the spool; the number of messages delivered
    (0 when no collector is set).  A crash between spooling and saving the position re-spools
    that batch once (the collector de-duplicates on eventID); nothing is ever skipped."""
    if sender is None:
        return 0
    marker = sender.spool / ".shipped_seq"
    try:
        done = int(marker.read_text() or 0)
    except (OSError, ValueError):
        done = 0
    while True:
        rows = store.query(after_seq=done, limit=SHIP_BATCH)
        if not rows:
            break
        sender.enqueue_many([(row_to_event(r), r["seq"]) for r in rows])
        done = rows[-1]["seq"]
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(str(done))
        tmp.replace(marker)
    return sender.flush()


def checkpoint(store: AuditStore) -> dict[str, Any] | None:
    """Sign the head unless the newest checkpoint already covers it; the checkpoint or None."""
    if store.key is None or store.key.private is None:
        return None
    with store.engine.connect() as conn:
        last_seq = conn.execute(select(AuditHead.last_seq)).scalar() or 0
        covered = conn.execute(select(func.max(AuditCheckpoint.seq))).scalar() or 0
    if last_seq == 0 or covered >= last_seq:
        return None
    return store.checkpoint("timer")


def archive_path(archive_dir: Path, now: dt.datetime) -> Path:
    return Path(archive_dir) / f"audit-{now.strftime('%Y%m%dT%H%M%SZ')}.jsonl"


def retention(store: AuditStore, retention_days: int, archive_dir: Path,
              now: dt.datetime | None = None) -> Path | None:
    """Archive (then delete) every record older than the retention period; the archive file or None.

    The archive is itself an audit event (Audit Log Used, action "archive"), recorded after the
    move so it stays in the live chain."""
    now = now or ev.utcnow()
    cutoff = now - dt.timedelta(days=retention_days)
    path = archive_path(archive_dir, now)
    n = store.archive(cutoff, path)
    if n == 0:
        return None
    store.append(ev.AuditEvent(
        AuditEventType.AUDIT_LOG_USED, actor=ACTOR,
        objects=(ev.ParticipantObject(ObjectKind.AUDIT_LOG, "audit_events", "retention archive"),),
        details={"action": "archive", "records": n, "before": ev.format_time(cutoff), "file": str(path)},
    ))
    log.info("audit retention: archived %d record(s) older than %s to %s", n, ev.format_time(cutoff), path)
    return path


def _retention_with_lease(store: AuditStore, settings: Any) -> None:
    import os
    import socket

    from bridge.store import lease

    owner = f"{socket.gethostname()}:{os.getpid()}"
    if not lease.acquire(store.engine, RETENTION_LEASE, owner, ttl_seconds=3600):
        log.info("audit retention: another replica holds the lease; skipped")
        return
    try:
        retention(store, settings.audit.retention_days, settings.audit.archive_dir)
    finally:
        lease.release(store.engine, RETENTION_LEASE, owner)


def keycloak_events_enabled(settings: Any) -> bool:
    return bool(settings.audit.keycloak_events and settings.keycloak.admin_password is not None)


def keycloak_events(settings: Any, store: AuditStore) -> Any:
    """One pull of Keycloak's user events (under a database lease); its report or None."""
    from bridge.audit.keycloak_events import pull_from_settings

    return pull_from_settings(settings, store)


def keycloak_admin_events_enabled(settings: Any) -> bool:
    return bool(settings.audit.keycloak_admin_events and settings.keycloak.admin_password is not None)


def keycloak_admin_events(settings: Any, store: AuditStore) -> Any:
    """One pull of Keycloak's admin events (under its own database lease); its report or None."""
    from bridge.audit.keycloak_admin_events import pull_from_settings

    return pull_from_settings(settings, store)


def _safe(name: str, fn: Any, *args: Any) -> Any:
    """Run a job; a failure is logged and retried at the next interval, never kills the scheduler."""
    def run() -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("audit job %s failed; retrying at the next interval", name)
    run.__name__ = f"audit_{name}"
    return run


def schedule(scheduler: Any, settings: Any, store: AuditStore, sender: SyslogSender | None) -> list[str]:
    """Add the audit jobs to an APScheduler scheduler; their ids."""
    a = settings.audit
    now = dt.datetime.now()
    jobs = [("audit-checkpoint", _safe("checkpoint", checkpoint, store), a.checkpoint_interval_seconds),
            ("audit-retention", _safe("retention", _retention_with_lease, store, settings), a.retention_check_seconds)]
    if sender is not None:
        jobs.insert(0, ("audit-ship", _safe("ship", ship, store, sender), a.ship_interval_seconds))
    if keycloak_events_enabled(settings):
        jobs.append(("audit-keycloak-events", _safe("keycloak_events", keycloak_events, settings, store),
                     a.keycloak_events_interval_seconds))
    else:
        log.info("audit: Keycloak login events are not pulled (audit.keycloak_events off or no "
                 "keycloak.admin_password)")
    if keycloak_admin_events_enabled(settings):
        jobs.append(("audit-keycloak-admin-events",
                     _safe("keycloak_admin_events", keycloak_admin_events, settings, store),
                     a.keycloak_events_interval_seconds))
    else:
        log.info("audit: Keycloak admin events are not pulled (audit.keycloak_admin_events off or no "
                 "keycloak.admin_password)")
    for job_id, fn, seconds in jobs:
        scheduler.add_job(fn, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True,
                          next_run_time=now)
    return [j[0] for j in jobs]


def run_once(settings: Any, store: AuditStore, sender: SyslogSender | None) -> None:
    """One round of every job (``serve --once`` and tests)."""
    if keycloak_events_enabled(settings):
        _safe("keycloak_events", keycloak_events, settings, store)()
    if keycloak_admin_events_enabled(settings):
        _safe("keycloak_admin_events", keycloak_admin_events, settings, store)()
    checkpoint(store)
    _retention_with_lease(store, settings)
    ship(store, sender)
