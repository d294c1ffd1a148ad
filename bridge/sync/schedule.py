"""The scheduled sync (APScheduler): one job, never overlapping itself in this process
(``max_instances=1``) nor across replicas (leases in the database, see bridge/store/lease.py), and
running once per interval across replicas (:func:`sync_job`).
The same scheduler runs the audit trail's jobs (syslog shipping, timed checkpoints, retention
archive; bridge/audit/jobs.py) and the access review's (campaign, escalation; bridge/review/jobs.py)."""

from __future__ import annotations

import datetime as dt
import logging

from bridge.config import Settings
from bridge.store import lease
from bridge.sync.runner import RunReport, SyncRunner

log = logging.getLogger(__name__)
#: held for one interval by the replica whose scheduler ran the sync (see sync_job)
SLOT_LEASE = "directory-sync:schedule"


def sync_job(runner: SyncRunner, interval_seconds: float) -> RunReport | None:
    """One scheduled tick: run unless another replica already ran in this interval (then None).

    Why a second lease: the run lease (``directory-sync``) is held only while a run lasts, so two
    replicas whose schedulers tick a few seconds apart would each find it free and run twice per
    interval.  The slot lease is kept for a whole interval by whoever ran; its own next tick
    renews it (same owner), another replica's tick inside the interval skips, and if the holder
    dies the slot expires and a survivor takes over within one interval.  A manual
    ``sync --apply`` takes only the run lease, so it is never blocked by the schedule."""
    if not lease.acquire(runner.engine, SLOT_LEASE, runner.owner, interval_seconds):
        holder = lease.holder(runner.engine, SLOT_LEASE)
        log.info("sync: this interval's run belongs to %s; skipped", holder[0] if holder else "another replica")
        return None
    report = runner.run(apply=True)
    log.info("sync run %s: %s (%s) %.1f s %s", report.run_id, report.status, report.mode,
             report.duration, report.plan.counts() if report.plan else "")
    return report


def serve(settings: Settings, *, metrics_port: int = 9464, once: bool = False) -> None:
    from apscheduler.schedulers.blocking import BlockingScheduler
    from prometheus_client import start_http_server

    from bridge.audit import jobs as audit_jobs
    from bridge.audit.syslog import syslog_sender
    from bridge.services import Services
    from bridge.sync.factory import build_runner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = build_runner(settings)
    audit_store = runner.audit or Services(settings, engine=runner.engine).audit_store
    shipper = syslog_sender(settings)  # ships new records from the database to the collector
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1")
        log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)

    def job() -> None:
        sync_job(runner, settings.sync.interval_seconds)

    from bridge.breakglass import jobs as break_glass_jobs

    if once:
        job()
        audit_jobs.run_once(settings, audit_store, shipper)
        break_glass_jobs.run_once(settings, audit_store)
        return
    sched = BlockingScheduler()
    sched.add_job(job, "interval", seconds=settings.sync.interval_seconds, max_instances=1, coalesce=True,
                  id="directory-sync", next_run_time=dt.datetime.now())
    audit_jobs.schedule(sched, settings, audit_store, shipper)
    from bridge.review import jobs as review_jobs

    review_jobs.schedule(sched, settings)  # access reviews: monthly campaign, hourly escalation
    break_glass_jobs.schedule(sched, settings, audit_store)  # alert retries, break_glass.stop records
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("stopping the scheduler")
    finally:
        audit_jobs.ship(audit_store, shipper)  # the last records go out before exit
