"""`pacs-bridge sync --plan|--apply|--history` and `pacs-bridge serve` (scheduled sync + /metrics)."""

from __future__ import annotations

import json
from typing import Any

import click

from bridge.errors import ExitStatus


def _json_report(report: Any) -> dict[str, Any]:
    from bridge.sync.plan import plan_to_dict

    return {
        "status": report.status, "mode": report.mode, "run_id": report.run_id,
        "duration_s": round(report.duration, 3),
        "gate": {"ok": report.gate.ok, "reasons": list(report.gate.reasons)} if report.gate else None,
        "plan": plan_to_dict(report.plan) if report.plan else None,
        "results": [{"target": r.target, "roles_created": r.roles_created, "added": r.added,
                     "removed": r.removed, "leavers": r.leavers, "failures": r.failures}
                    for r in report.results],
        "errors": report.errors,
    }


EXIT = {"ok": 0, "dry_run": 0, "unchanged": 0, "partial": 3, "threshold_stop": 4, "failed": 1, "locked": 5}


@click.command("sync")
@click.option("--config", "-c", "config_path", envvar="PACS_BRIDGE_CONFIG", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), help="overrides sync.policy_file")
@click.option("--plan", "do_plan", is_flag=True, help="show what would change; change nothing (default)")
@click.option("--apply", "do_apply", is_flag=True, help="apply the plan (after the safety gate)")
@click.option("--allow-deletes", is_flag=True, help="apply even above the deletion threshold (after review)")
@click.option("--history", "show_history", is_flag=True, help="list recent runs")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output only")
def sync_cli(config_path: str | None, policy_path: str | None, do_plan: bool, do_apply: bool,
             allow_deletes: bool, show_history: bool, as_json: bool) -> None:
    """Directory groups -> roles in Keycloak, SCIM and the bridge's store.

    Exit codes: 0 ok / no change, 1 directory or target unavailable, 2 bad configuration or policy,
    3 partial (some users failed; retried next run), 4 stopped by the deletion threshold,
    5 another replica is syncing."""
    from rich.console import Console

    from bridge.cli_common import load_settings
    from bridge.sync.factory import build_runner
    from bridge.sync.plan import render_plan
    from bridge.sync.runner import history

    if do_plan and do_apply:
        raise click.UsageError("--plan and --apply exclude each other")
    settings = load_settings(config_path)
    console = Console(stderr=as_json)
    if show_history:  # only the run table: no policy, no targets, no directory
        from bridge.services import Services
        from bridge.store.db import migrate_store

        migrate_store(settings)  # a store that never ran a sync lists no runs
        rows = history(Services(settings).engine)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        table = Table(title="sync runs")
        for col in ("id", "started", "finished", "mode", "status", "changes", "errors"):
            table.add_column(col)
        for r in rows:
            c = r["counts"] or {}
            changes = f"+{c.get('adds', 0)} -{c.get('removals', 0)} roles {c.get('role_creations', 0)}"
            table.add_row(str(r["id"]), r["started_at"], r["finished_at"] or "-", r["mode"], r["status"],
                          changes, str(len(r["errors"] or [])))
        console.print(table)
        return
    runner = build_runner(settings, policy_path=policy_path)  # PolicyError exit 2, TargetError "sync: ..." exit 1
    tty = console.is_terminal and not as_json
    if tty:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("sync", total=None)
            report = runner.run(apply=do_apply, allow_deletes=allow_deletes, full=True,
                                progress=lambda s: bar.update(task, description=s),
                                step=lambda n: bar.advance(task, n))
    else:
        report = runner.run(apply=do_apply, allow_deletes=allow_deletes, full=True)
    if as_json:
        click.echo(json.dumps(_json_report(report), indent=2))
        _exit_for(report.status)
        return
    if report.plan is not None:
        render_plan(report.plan, console)
    for e in report.errors:
        console.print(f"[red]error:[/] {e.get('target', '')} {e.get('user', '')} {e['error']}".replace("  ", " "))
    if report.gate and not report.gate.ok:
        console.print("[bold red]STOPPED by the deletion threshold; nothing was changed.[/]")
        for r in report.gate.reasons:
            console.print(f"  {r}")
        console.print("Review the plan (docs/sync.md, runbook), then re-run with --apply --allow-deletes.")
    for r in report.results:
        console.print(f"{r.target}: created {r.roles_created} roles, +{r.added} -{r.removed}, "
                      f"{r.leavers} leavers offboarded, {len(r.failures)} failures")
        for f in r.failures:
            console.print(f"  [red]failed[/] {f['user']}: {f['change']}: {f['error']}")
    console.print(f"status: {report.status} ({report.duration:.1f} s)")
    _exit_for(report.status)


def _exit_for(status: str) -> None:
    """The report is printed; a run that did not end well still has to say so in the exit code."""
    code = EXIT.get(status, 1)
    if code:
        raise ExitStatus(code)


@click.command("serve")
@click.option("--config", "-c", "config_path", envvar="PACS_BRIDGE_CONFIG", type=click.Path(dir_okay=False))
@click.option("--metrics-port", type=int, default=9464, show_default=True,
              help="Prometheus /metrics on 127.0.0.1 (0 = off; the web app also serves /metrics)")
@click.option("--once", is_flag=True, help="run one scheduled cycle and exit (for tests)")
def serve_cli(config_path: str | None, metrics_port: int, once: bool) -> None:
    """Run the sync every sync.interval_seconds (incremental; every Nth run full), one replica at a time."""
    from bridge.cli_common import load_settings
    from bridge.sync.schedule import serve

    serve(load_settings(config_path), metrics_port=metrics_port, once=once)  # PolicyError: exit 2
