"""Build the compliance report from the collectors and the control map, as JSON and as HTML.

The HTML is one self-contained page (no script, no external asset) an auditor can file: a
summary table with one row per control, then each control's evidence.  Status is written out in
words, never by colour alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from bridge.compliance import checks
from bridge.compliance.controls import CONTROLS, Control, matches
from bridge.compliance.evidence import Evidence, Status, guarded, missing, worst


def release() -> str:
    try:
        return version("pacs-sso-bridge")
    except PackageNotFoundError:  # a checkout that is not installed
        return "0+unknown"


@dataclass(frozen=True)
class ControlResult:
    control: Control
    status: Status
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class Report:
    generated_at: str
    version: str
    status: Status
    controls: tuple[ControlResult, ...]
    evidence: tuple[Evidence, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at, "version": self.version, "status": self.status.value,
            "controls": [{"id": r.control.id, "framework": r.control.framework, "citation": r.control.citation,
                          "title": r.control.title, "status": r.status.value,
                          "evidence": [e.check for e in r.evidence]} for r in self.controls],
            "evidence": [e.to_dict() for e in self.evidence],
        }

    def to_html(self) -> str:
        env = Environment(loader=PackageLoader("bridge.compliance", "templates"),
                          autoescape=select_autoescape(["html"]))
        return env.get_template("report.html").render(report=self)


def collect(ctx: checks.Context) -> list[Evidence]:
    """Every registered collector's evidence (a collector that raises gives missing evidence)."""
    out: list[Evidence] = []
    for check, fn in checks.COLLECTORS.items():
        out.extend(guarded(check, check, lambda fn=fn: fn(ctx)))
    return out


def build(ctx: checks.Context) -> Report:
    evidence = collect(ctx)
    results = []
    for control in CONTROLS:
        mine: list[Evidence] = []
        for prefix in control.evidence:
            found = [e for e in evidence if matches(prefix, e.check)]
            mine.extend(found or [missing(prefix, prefix, f"no evidence collected for {prefix!r} "
                                          "(its module is not installed or not configured)")])
        results.append(ControlResult(control, worst(e.status for e in mine), tuple(mine)))
    now = dt.datetime.fromtimestamp(ctx.now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Report(now, ctx.version, worst(r.status for r in results), tuple(results), tuple(evidence))


def write(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """``compliance-report.html`` and ``.json`` in ``out_dir`` (0600: the report names accounts)."""
    import json
    import os

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "compliance-report.html", out_dir / "compliance-report.json")
    for path, text in zip(paths, (report.to_html(), json.dumps(report.to_dict(), indent=1) + "\n"), strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    return paths
