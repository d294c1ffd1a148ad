"""Prometheus metrics of the sync (exposed on /metrics by `pacs-bridge serve`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RUN_DURATION = Histogram("pacs_bridge_sync_run_duration_seconds", "Duration of a sync run",
                         ["mode", "status"], buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
CHANGES = Counter("pacs_bridge_sync_changes_total", "Changes applied", ["target", "kind"])
FAILURES = Counter("pacs_bridge_sync_failures_total", "Per-user or per-target failures", ["target"])
RUNS = Counter("pacs_bridge_sync_runs_total", "Sync runs by status", ["status"])
LAST_SUCCESS = Gauge("pacs_bridge_sync_last_success_timestamp_seconds", "Unix time of the last successful run")


def observe(report: Any) -> None:
    RUN_DURATION.labels(report.mode, report.status).observe(report.duration)
    RUNS.labels(report.status).inc()
    for r in report.results:
        for kind in ("added", "removed", "roles_created", "leavers"):
            n = getattr(r, kind)
            if n:
                CHANGES.labels(r.target, kind).inc(n)
        if r.failures:
            FAILURES.labels(r.target).inc(len(r.failures))
    for e in report.errors:
        FAILURES.labels(e.get("target", "directory")).inc()
    if report.status in ("ok", "unchanged"):
        LAST_SUCCESS.set_to_current_time()
