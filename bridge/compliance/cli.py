"""`pacs-bridge compliance report`: the evidence report for HIPAA 164.312 and GDPR Art. 32."""

from __future__ import annotations

from pathlib import Path

import click

from bridge.cli_common import config_option, load_settings
from bridge.errors import ExitStatus


@click.group("compliance")
def compliance_cli() -> None:
    """Compliance evidence from the running deployment."""


@compliance_cli.command("report")
@config_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="directory for compliance-report.html and compliance-report.json")
@click.option("--test-report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the JUnit XML of this release's test run (default: compliance.test_report_dir)")
@click.option("--strict", is_flag=True, help="exit 1 unless every control passed (for monitoring)")
def report_cmd(config_path: str | None, out_dir: Path, test_report: Path | None, strict: bool) -> None:
    """Check each control against live evidence and write the report (HTML and JSON)."""
    from bridge.compliance import report as report_mod
    from bridge.compliance.checks import Context
    from bridge.compliance.evidence import Status

    settings = load_settings(config_path)
    ctx = Context(settings, report_mod.release(), test_report=test_report)
    rep = report_mod.build(ctx)
    html, js = report_mod.write(rep, out_dir)
    from bridge.audit.cli import record_audit_use

    # the report read the audit trail (chain verification): that use is itself recorded
    record_audit_use(ctx.services.audit_store, "compliance report", status=rep.status.value)
    for r in rep.controls:
        click.echo(f"{r.status.value.upper():8} {r.control.citation:28} {r.control.title}")
    click.echo(f"overall: {rep.status.value.upper()}; written {html} and {js}")
    if strict and rep.status is not Status.PASS:
        raise ExitStatus(1)
