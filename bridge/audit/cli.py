"""`pacs-bridge audit`: verify, read and export the tamper-evident audit trail."""

from __future__ import annotations

import json
import sys

import click

from bridge.cli_common import config_option, load_settings
from bridge.errors import ExitStatus, UnavailableError


@click.group("audit")
def audit_cli() -> None:
    """The tamper-evident audit trail: verify, read, export."""


def _audit_store(config_path: str | None, *, signing: bool = False):  # type: ignore[no-untyped-def]
    from bridge.audit.store import open_store

    settings = load_settings(config_path)
    return settings, open_store(settings, signing=signing)  # KeyFileError: exit 2


def record_audit_use(store, what: str, **details: object) -> None:  # type: ignore[no-untyped-def]
    """Reading the audit trail is itself audited (DICOM 110101 Audit Log Used)."""
    import getpass

    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType, ObjectKind

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
    from bridge.core.audit_codes import AuditEventType

    for t in types:
        try:
            AuditEventType(t)
        except ValueError:
            raise click.BadParameter(f"unknown event type {t!r}; known: "
                                     f"{', '.join(e.value for e in AuditEventType)}", param_hint="--type") from None
    return store.query(user=user, patient=patient, study=study, types=types or None,
                       since=_when(since, "--since"), until=_when(until, "--until"), limit=limit)


@audit_cli.command("verify")
@config_option
@click.option("--workers", type=int, default=None, help="processes for long chains (default: CPU count)")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(config_path: str | None, workers: int | None, as_json: bool) -> None:
    """Check the hash chain and signed checkpoints; exit 1 naming the first bad record."""
    from bridge.audit.verify import AuditChainBroken

    _, store = _audit_store(config_path)
    rep = store.verify(workers=workers)
    if as_json:
        click.echo(json.dumps(rep.to_dict()))
        if not rep.ok:
            raise ExitStatus(1)
    elif rep.ok:
        sig = "signatures checked" if rep.signatures_checked else "NO checkpoint key: signatures not checked"
        click.echo(f"audit trail OK: {rep.message} ({sig}; {rep.seconds:.2f} s)")
    else:
        raise AuditChainBroken(f"audit trail BROKEN: {rep.kind} at record {rep.seq}"
                               f"{f' (event {rep.event_id})' if rep.event_id else ''}: {rep.message}")


@audit_cli.command("rotate-checkpoint-key")
@config_option
def audit_rotate_checkpoint_key(config_path: str | None) -> None:
    """A new checkpoint signing key: the head is signed with the old key first, the old public key
    is kept in <key file>.retired.pub (it verifies what it signed); restart the bridge afterwards."""
    from pathlib import Path

    from bridge.audit.keys import CheckpointKey, retired_path
    from bridge.kek import KeyEncryptor

    settings, store = _audit_store(config_path, signing=True)
    store.checkpoint("rotation")  # everything so far is covered by the old key's signature
    old, new = CheckpointKey.rotate(Path(settings.audit.checkpoint_key_file), KeyEncryptor.from_settings(settings))
    record_audit_use(store, "checkpoint key rotated", old_kid=old, new_kid=new)
    click.echo(f"checkpoint key {old} retired (kept in {retired_path(settings.audit.checkpoint_key_file)}); "
               f"new key {new}. Copy the new .pub off the host; restart the bridge.")


@audit_cli.command("verify-archive")
@config_option
@click.argument("archive", type=click.Path(dir_okay=False, exists=True))
def audit_verify_archive(config_path: str | None, archive: str) -> None:
    """Check one retention archive on its own: its chain and its signed closing checkpoint (an
    encrypted archive is opened with the configuration's KEK); exit 1 naming the problem."""
    from pathlib import Path

    from bridge.audit.archive import verify_archive
    from bridge.audit.verify import AuditChainBroken

    _, store = _audit_store(config_path)
    rep = verify_archive(Path(archive), store.key, store.file_keys)
    if not rep.ok:
        raise AuditChainBroken(f"archive BROKEN: {rep.message}")
    click.echo(f"archive OK: {rep.message}")


@audit_cli.command("tail")
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


@audit_cli.command("query")
@config_option
@audit_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
def audit_query(config_path: str | None, user, patient, study, types, since, until, limit, fmt) -> None:  # type: ignore[no-untyped-def]
    """Records matching the filters, as CSV or JSON on stdout."""
    from bridge.audit.export import export_csv, export_json

    _, store = _audit_store(config_path, signing=True)
    rows = _query(store, user, patient, study, types, since, until, limit)
    (export_csv if fmt == "csv" else export_json)(rows, sys.stdout)
    record_audit_use(store, "query", user=user, patient=patient, study=study, types=list(types), format=fmt)


@audit_cli.command("patient-report")
@config_option
@click.argument("patient_id")
@click.option("--since", help="from this ISO date/time (UTC if no zone)")
@click.option("--until", help="before this ISO date/time")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
def audit_patient_report(config_path: str | None, patient_id: str, since: str | None, until: str | None,
                         fmt: str) -> None:
    """Who viewed this patient (GDPR Art. 15): every recorded access to PATIENT_ID's studies,
    allowed and refused, by whom, when, for what purpose, from where.  The report is itself
    recorded in the audit trail."""
    import getpass

    from bridge.audit.patient_report import audited_report, render
    from bridge.core import audit_events as ev

    if not patient_id.strip():
        raise click.BadParameter("must not be empty", param_hint="PATIENT_ID")
    _, store = _audit_store(config_path, signing=True)
    report = audited_report(store, patient_id, ev.Actor(username=getpass.getuser(), client_id="pacs-bridge-cli"),
                            since=_when(since, "--since"), until=_when(until, "--until"), fmt=fmt)
    click.echo(render(report, fmt), nl=False)


@audit_cli.command("pull-keycloak-events")
@config_option
@click.option("--json", "as_json", is_flag=True)
def audit_pull_keycloak_events(config_path: str | None, as_json: bool) -> None:
    """Record the logins that happened inside Keycloak since the last pull (what `serve` does
    every audit.keycloak_events_interval_seconds)."""
    from bridge.audit.keycloak_events import pull_from_settings

    settings, store = _audit_store(config_path, signing=True)
    _echo_pull(settings, pull_from_settings(settings, store), "event", as_json)  # KeycloakEventsError: exit 2


@audit_cli.command("pull-keycloak-admin-events")
@config_option
@click.option("--json", "as_json", is_flag=True)
def audit_pull_keycloak_admin_events(config_path: str | None, as_json: bool) -> None:
    """Record the changes made in Keycloak's admin console or admin API since the last pull
    (roles given by hand, users, credentials, realm settings; what `serve` does with the
    login events)."""
    from bridge.audit.keycloak_admin_events import pull_from_settings

    settings, store = _audit_store(config_path, signing=True)
    _echo_pull(settings, pull_from_settings(settings, store), "admin event", as_json)  # KeycloakEventsError: exit 2


def _echo_pull(settings, report, what: str, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """One pull's report, the same for login and admin events (None: another process holds the lease)."""
    if report is None:
        raise UnavailableError(f"another process is pulling Keycloak {what}s right now; nothing done")
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.by_type.items())) or "nothing new"
    click.echo(f"keycloak realm {settings.keycloak.realm}: {report.fetched} {what}(s) read, "
               f"{report.recorded} recorded ({kinds}), {report.duplicates} already in the trail"
               + (f", {report.errors} unusable (recorded as audit.input_rejected)" if report.errors else ""))


@audit_cli.command("export-fhir")
@config_option
@audit_filters
def audit_export_fhir(config_path: str | None, user, patient, study, types, since, until, limit) -> None:  # type: ignore[no-untyped-def]
    """Records matching the filters as a FHIR Bundle of IHE BALP AuditEvents (JSON on stdout)."""
    from bridge.audit.chain import row_to_event
    from bridge.audit.fhir import to_fhir

    settings, store = _audit_store(config_path, signing=True)
    rows = _query(store, user, patient, study, types, since, until, limit)
    entries = [{"resource": to_fhir(row_to_event(r), source_id=settings.audit.source_id,
                                    enterprise_site_id=settings.audit.enterprise_site_id)} for r in rows]
    click.echo(json.dumps({"resourceType": "Bundle", "type": "collection", "total": len(entries),
                           "entry": entries}, indent=2))
    record_audit_use(store, "export-fhir", user=user, patient=patient, study=study, types=list(types))
