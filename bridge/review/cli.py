"""`pacs-bridge review run | escalate | export`: the access review from the command line."""

from __future__ import annotations

import getpass

import click


@click.group("review")
def review_cli() -> None:
    """Access reviews (recertification): campaigns, escalation, exports (docs/governance.md)."""


@review_cli.command("run")
@click.option("--config", "-c", "config_path", envvar="PACS_BRIDGE_CONFIG", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), help="overrides sync.policy_file")
def run_cmd(config_path: str | None, policy_path: str | None) -> None:
    """Compute the review and start a campaign (closes the previous one)."""
    from bridge.cli_common import load_settings
    from bridge.review.campaign import current
    from bridge.review.run import run_review
    from bridge.services import Services

    settings = load_settings(config_path)
    cid = run_review(settings, started_by=f"cli:{getpass.getuser()}", policy_path=policy_path)
    camp = current(Services(settings).engine)
    s = camp.summary if camp else {}
    click.echo(f"review campaign {cid}: {s.get('items', 0)} assignments of {s.get('users', 0)} users; "
               f"deadline {camp.deadline.date().isoformat() if camp else '-'}")
    for flag, n in (s.get("flags") or {}).items():
        click.echo(f"  {flag:14} {n}")
    for q, n in (s.get("queues") or {}).items():
        click.echo(f"  queue {q}: {n} items")
    for w in s.get("warnings") or []:
        click.echo(f"warning: {w}")


@review_cli.command("escalate")
@click.option("--config", "-c", "config_path", envvar="PACS_BRIDGE_CONFIG", type=click.Path(dir_okay=False))
def escalate_cmd(config_path: str | None) -> None:
    """Escalate the open campaign's items past the deadline (serve does it every hour)."""
    from bridge.cli_common import load_settings
    from bridge.review.campaign import escalate
    from bridge.review.notify import webhook
    from bridge.services import Services

    settings = load_settings(config_path)
    services = Services(settings)
    n = escalate(services.engine, audit=services.audit_store, notify=webhook(settings))
    click.echo(f"{n} items escalated to the privacy officer")


@review_cli.command("export")
@click.option("--config", "-c", "config_path", envvar="PACS_BRIDGE_CONFIG", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
def export_cmd(config_path: str | None, fmt: str) -> None:
    """The latest campaign, every user and item (for auditors; recorded as an audit-log use)."""
    from bridge.cli_common import load_settings
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType, ObjectKind
    from bridge.errors import InputError
    from bridge.review import campaign, report
    from bridge.services import Services

    settings = load_settings(config_path)
    services = Services(settings)
    camp = campaign.current(services.engine)
    if camp is None:
        raise InputError("no review campaign yet: run `pacs-bridge review run`")
    users = campaign.users_of(services.engine, camp.id)
    items = campaign.items_of(services.engine, camp.id)
    services.audit_store.append(ev.AuditEvent(
        AuditEventType.AUDIT_LOG_USED, actor=ev.Actor(username=f"cli:{getpass.getuser()}"),
        objects=(ev.ParticipantObject(ObjectKind.CONFIG, f"review-campaign:{camp.id}", "access review"),),
        details={"action": "review-export", "format": fmt, "campaign": camp.id}))
    click.echo(report.to_json(camp, users, items) if fmt == "json" else report.to_csv(users, items), nl=False)

