"""The ``serve`` jobs of break-glass: send the alerts still spooled (a collector or webhook receiver
that was down), and record the end of each grant whose time is up (``break_glass.stop``)."""

from __future__ import annotations

import logging
from typing import Any

from bridge.breakglass import alerts
from bridge.breakglass import service as service_mod

log = logging.getLogger(__name__)
#: how often the jobs run (an alert retried within this, an expiry recorded within this)
INTERVAL_SECONDS = 30


def _jobs(settings: Any, audit_store: Any) -> list[tuple[str, Any]]:
    channels = alerts.from_settings(settings)
    bg = service_mod.from_settings(settings, audit_store.engine, audit_store.append)

    def ended() -> None:
        try:
            bg.record_ended()
        except Exception:  # retried at the next interval; never kills the scheduler
            log.exception("break-glass: recording ended grants failed")

    return [("break-glass-alerts", channels.flush), ("break-glass-ended", ended)]


def schedule(scheduler: Any, settings: Any, audit_store: Any) -> list[str]:
    """Add the jobs to an APScheduler scheduler; their ids."""
    jobs = _jobs(settings, audit_store)
    for job_id, fn in jobs:
        scheduler.add_job(fn, "interval", seconds=INTERVAL_SECONDS, id=job_id, max_instances=1, coalesce=True)
    return [j for j, _ in jobs]


def run_once(settings: Any, audit_store: Any) -> None:
    """One round of each (``serve --once``)."""
    for _, fn in _jobs(settings, audit_store):
        fn()
