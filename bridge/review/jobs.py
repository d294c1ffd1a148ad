"""The review's jobs in ``serve`` (APScheduler, like the sync): a campaign on the configured
crontab schedule (monthly by default) and the escalation check every
``review.escalation_check_seconds``.

Replicas: every replica's scheduler fires; a database lease lets one of them start the campaign
and a guard skips a start when a campaign began within the last half day (the lease is released
after the run, so a replica whose clock is a few seconds late must not start a second one)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from typing import Any

from bridge.store import lease

log = logging.getLogger(__name__)
CAMPAIGN_LEASE = "review:campaign"
ESCALATION_LEASE = "review:escalation"
MIN_GAP = dt.timedelta(hours=12)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def scheduled_campaign(settings: Any) -> int | None:
    """Start a campaign unless another replica holds the lease or one started recently."""
    from bridge.review import campaign
    from bridge.review.run import run_review
    from bridge.services import Services
    from bridge.store.db import migrate
    from bridge.store.models import utcnow

    migrate(settings.store.url)
    engine = Services(settings).engine
    owner = _owner()
    if not lease.acquire(engine, CAMPAIGN_LEASE, owner, 3600):
        return None
    try:
        last = campaign.current(engine)
        if last is not None and utcnow() - last.started_at < MIN_GAP:
            log.info("review: campaign %s started at %s; not starting another", last.id, last.started_at)
            return None
        cid = run_review(settings, started_by="schedule")
        log.info("review: campaign %s started", cid)
        return cid
    finally:
        lease.release(engine, CAMPAIGN_LEASE, owner)


def escalation(settings: Any) -> int:
    from bridge.review.campaign import escalate
    from bridge.review.notify import webhook
    from bridge.services import Services

    services = Services(settings)
    owner = _owner()
    if not lease.acquire(services.engine, ESCALATION_LEASE, owner, 600):
        return 0
    try:
        return escalate(services.engine, audit=services.audit_store, notify=webhook(settings))
    finally:
        lease.release(services.engine, ESCALATION_LEASE, owner)


def _safe(name: str, fn: Any, *args: Any) -> Any:
    def run() -> None:
        try:
            fn(*args)
        except Exception:  # a failed review must never stop the scheduler (the sync runs beside it)
            log.exception("review job %s failed; retried at its next time", name)
    run.__name__ = f"review_{name}"
    return run


def schedule(scheduler: Any, settings: Any) -> list[str]:
    """Add the review jobs to ``scheduler`` (none when the policy has no ``reviewers:``)."""
    from apscheduler.triggers.cron import CronTrigger

    from bridge.policy.loader import load_policy

    if not settings.sync.policy_file or load_policy(settings.sync.policy_file).reviewers is None:
        log.info("review: the policy has no reviewers: section; no access review is scheduled")
        return []
    ids = ["review-escalation"]
    scheduler.add_job(_safe("escalation", escalation, settings), "interval",
                      seconds=settings.review.escalation_check_seconds, id="review-escalation",
                      max_instances=1, coalesce=True)
    if settings.review.schedule:
        scheduler.add_job(_safe("campaign", scheduled_campaign, settings),
                          CronTrigger.from_crontab(settings.review.schedule, timezone="UTC"),
                          id="review-campaign", max_instances=1, coalesce=True)
        ids.append("review-campaign")
    return ids
