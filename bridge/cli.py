"""`pacs-bridge`: the command line of the bridge (click).

Each area registers its own command group here; the commands stay thin and call the modules
that do the work, so everything a command does can also be tested without the CLI.
"""

from __future__ import annotations

import json
import sys

import click

from bridge.config import ConfigError, Settings, load_config, summary

CONFIG_ENV = "PACS_BRIDGE_CONFIG"


def config_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--config", "-c", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
        help=f"bridge YAML configuration (or ${CONFIG_ENV})",
    )(f)


def load_or_exit(path: str | None) -> Settings:
    """Load the configuration, or print every problem and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="pacs-sso-bridge")
def main() -> None:
    """PACS SSO Bridge: directory groups to Keycloak roles and MFA-enforced PACS tokens."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate PATH; list every error with its key path (exit 2), or print a summary (exit 0)."""
    settings = load_or_exit(path)
    click.echo(f"{path}: OK")
    width = max(len(k) for k, _ in summary(settings))
    for key, line in summary(settings):
        click.echo(f"  {key.ljust(width)}  {line}")


@main.group()
def devstack() -> None:
    """The real local stack on loopback (Keycloak, Samba AD, OpenLDAP, Orthanc, SCIM, PostgreSQL, rsyslog)."""


@devstack.command("up")
@click.option("--only", multiple=True, help="start only these services (repeatable)")
@click.option("--owner", default="cli", help="who owns the stack (test runs stop only their own)")
def devstack_up(only: tuple[str, ...], owner: str) -> None:
    """Install what is missing, start every service, wait for health, seed the demo data."""
    from bridge.devstack import stack
    from bridge.devstack.process import DevstackError

    try:
        stack.up(only or None, owner=owner)
    except DevstackError as exc:
        click.echo(f"devstack: {exc}", err=True)
        sys.exit(1)


@devstack.command("down")
@click.option("--owner", default=None, help="stop only if the stack was started by this owner")
def devstack_down(owner: str | None) -> None:
    """Stop exactly the processes the stack started."""
    from bridge.devstack import stack

    stack.down(owner=owner)


@devstack.command("status")
@click.option("--json", "as_json", is_flag=True)
def devstack_status(as_json: bool) -> None:
    """Which services are running."""
    from bridge.devstack import stack

    st = stack.status()
    if as_json:
        click.echo(json.dumps(st))
        return
    for name, running in st.items():
        click.echo(f"  {name:10s} {'running' if running else 'stopped'}")


@main.group()
def demo() -> None:
    """Helpers for the demo hospital."""


@demo.command("otp")
@click.argument("user")
def demo_otp(user: str) -> None:
    """Print USER's current TOTP code (demo accounts only)."""
    from bridge.devstack import demo_data

    try:
        click.echo(demo_data.current_otp(user))
    except KeyError:
        click.echo(f"demo otp: no demo account named {user!r}", err=True)
        sys.exit(2)


def _register_areas() -> None:
    """Command groups owned by other modules (imported lazily inside each command)."""
    from bridge.policy.cli import policy_cli
    from bridge.tokens.cli import keys_cli

    main.add_command(policy_cli)
    from bridge.sync.cli import serve_cli, sync_cli

    main.add_command(sync_cli)
    main.add_command(serve_cli)
    main.add_command(keys_cli)


_register_areas()

# ---------------------------------------------------------------------------- db (bridge/store)
@main.group()
def db() -> None:
    """The bridge's database (SQLite file or PostgreSQL, `store.url`)."""


@db.command("upgrade")
@config_option
@click.option("--url", default=None, help="database URL (default: store.url from the configuration)")
def db_upgrade(config_path: str | None, url: str | None) -> None:
    """Create or migrate the database schema to the newest revision."""
    from bridge.store.db import StoreError, migrate, safe_url

    url = url or load_or_exit(config_path).store.url
    try:
        rev = migrate(url)
    except StoreError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"{safe_url(url)}: at revision {rev}")


# ---------------------------------------------------------------------------- audit (bridge/audit)
@main.group()
def audit() -> None:
    """The tamper-evident audit trail: verify, read, export."""


def _audit_store(config_path: str | None, *, signing: bool = False):  # type: ignore[no-untyped-def]
    from bridge.audit.keys import KeyFileError
    from bridge.audit.store import open_store

    settings = load_or_exit(config_path)
    try:
        return settings, open_store(settings, signing=signing)
    except KeyFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _record_audit_use(store, what: str, **details: object) -> None:  # type: ignore[no-untyped-def]
    """Reading the audit trail is itself audited (DICOM 110101 Audit Log Used)."""
    import getpass

    from bridge.audit import events as ev
    from bridge.audit.codes import AuditEventType, ObjectKind

    store.append(ev.AuditEvent(
        AuditEventType.AUDIT_LOG_USED, actor=ev.Actor(username=getpass.getuser(), client_id="pacs-bridge-cli"),
        objects=(ev.ParticipantObject(ObjectKind.AUDIT_LOG, "audit_events", what),),
        details={k: v for k, v in details.items() if v not in (None, (), "")}))


def _when(value: str | None, name: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO date/time: {value!r}", param_hint=name) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def audit_filters(f):  # type: ignore[no-untyped-def]
    for opt in reversed([
        click.option("--user", help="sub@iss or username of the actor"),
        click.option("--patient", help="patient id"),
        click.option("--study", help="Study Instance UID"),
        click.option("--type", "types", multiple=True, help="event type, e.g. login.failure (repeatable)"),
        click.option("--since", help="from this ISO date/time (UTC if no zone)"),
        click.option("--until", help="before this ISO date/time"),
        click.option("--limit", type=int, default=None),
    ]):
        f = opt(f)
    return f


def _query(store, user, patient, study, types, since, until, limit):  # type: ignore[no-untyped-def]
    from bridge.audit.codes import AuditEventType

    for t in types:
        try:
            AuditEventType(t)
        except ValueError:
            raise click.BadParameter(f"unknown event type {t!r}; known: "
                                     f"{', '.join(e.value for e in AuditEventType)}", param_hint="--type") from None
    return store.query(user=user, patient=patient, study=study, types=types or None,
                       since=_when(since, "--since"), until=_when(until, "--until"), limit=limit)


@audit.command("verify")
@config_option
@click.option("--workers", type=int, default=None, help="processes for long chains (default: CPU count)")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(config_path: str | None, workers: int | None, as_json: bool) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad record."""
    _, store = _audit_store(config_path)
    rep = store.verify(workers=workers)
    if as_json:
        click.echo(json.dumps(rep.to_dict()))
    elif rep.ok:
        sig = "signatures checked" if rep.signatures_checked else "NO checkpoint key: signatures not checked"
        click.echo(f"audit trail OK: {rep.message} ({sig}; {rep.seconds:.2f} s)")
    else:
        click.echo(f"audit trail BROKEN: {rep.kind} at record {rep.seq}"
                   f"{f' (event {rep.event_id})' if rep.event_id else ''}: {rep.message}", err=True)
    sys.exit(0 if rep.ok else 1)


@audit.command("tail")
@config_option
@click.option("-n", "count", type=int, default=20, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="keep printing new records")
def audit_tail(config_path: str | None, count: int, follow: bool) -> None:
    """Print the newest records, one line each."""
    import time

    _, store = _audit_store(config_path)

    def show(r: dict) -> None:  # type: ignore[type-arg]
        who = r["actor_username"] or r["actor_user"] or r["client_id"] or "-"
        what = " ".join(f"{k}={r[k]}" for k in ("patient_id", "study_uid") if r[k])
        click.echo(f"{r['seq']:>8} {r['time']} {r['type']:<28} outcome={r['outcome']:<2} {who} {what}".rstrip())

    rows = store.tail(count)
    for r in rows:
        show(r)
    last = rows[-1]["seq"] if rows else 0
    while follow:
        time.sleep(1)
        for r in store.query(after_seq=last):
            show(r)
            last = r["seq"]


@audit.command("query")
@config_option
@audit_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
def audit_query(config_path: str | None, user, patient, study, types, since, until, limit, fmt) -> None:  # type: ignore[no-untyped-def]
    """Records matching the filters, as CSV or JSON on stdout."""
    from bridge.audit.store import export_csv, export_json

    _, store = _audit_store(config_path, signing=True)
    rows = _query(store, user, patient, study, types, since, until, limit)
    (export_csv if fmt == "csv" else export_json)(rows, sys.stdout)
    _record_audit_use(store, "query", user=user, patient=patient, study=study, types=list(types), format=fmt)


@audit.command("pull-keycloak-events")
@config_option
@click.option("--json", "as_json", is_flag=True)
def audit_pull_keycloak_events(config_path: str | None, as_json: bool) -> None:
    """Record the logins that happened inside Keycloak since the last pull (what `serve` does
    every audit.keycloak_events_interval_seconds)."""
    from bridge.audit.keycloak_events import KeycloakEventsError, pull_from_settings

    settings, store = _audit_store(config_path, signing=True)
    try:
        report = pull_from_settings(settings, store)
    except KeycloakEventsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if report is None:
        click.echo("another process is pulling Keycloak events right now; nothing done", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.by_type.items())) or "nothing new"
        click.echo(f"keycloak realm {settings.keycloak.realm}: {report.fetched} event(s) read, "
                   f"{report.recorded} recorded ({kinds}), {report.duplicates} already in the trail")


@audit.command("export-fhir")
@config_option
@audit_filters
def audit_export_fhir(config_path: str | None, user, patient, study, types, since, until, limit) -> None:  # type: ignore[no-untyped-def]
    """Records matching the filters as a FHIR Bundle of IHE BALP AuditEvents (JSON on stdout)."""
    from bridge.audit.fhir import to_fhir
    from bridge.audit.store import row_to_event

    settings, store = _audit_store(config_path, signing=True)
    rows = _query(store, user, patient, study, types, since, until, limit)
    entries = [{"resource": to_fhir(row_to_event(r), source_id=settings.audit.source_id,
                                    enterprise_site_id=settings.audit.enterprise_site_id)} for r in rows]
    click.echo(json.dumps({"resourceType": "Bundle", "type": "collection", "total": len(entries),
                           "entry": entries}, indent=2))
    _record_audit_use(store, "export-fhir", user=user, patient=patient, study=study, types=list(types))


if __name__ == "__main__":  # pragma: no cover
    main()
