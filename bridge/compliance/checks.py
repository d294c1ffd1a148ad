"""The evidence collectors: each reads one thing from the running deployment.

Each collector takes a :class:`Context` and returns evidence; none changes anything (the report
may run against production at any hour).  Collectors for parts that other modules own -- the
last access review, open break-glass items -- are registered by those modules
(:func:`register`), so this module imports none of them.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bridge.compliance import probes
from bridge.compliance.evidence import Evidence, failed, missing, passed

#: HIPAA 164.312(a)(2)(iii): an idle session ends within this (the gateway's default)
MAX_IDLE_SECONDS = 15 * 60
#: HIPAA 164.316(b)(2)(i): documentation kept six years
MIN_RETENTION_DAYS = 6 * 365


@dataclass
class Context:
    """What the collectors read: the configuration and, built lazily, the services over it."""

    settings: Any
    version: str
    test_report: Path | None = None
    now: float = field(default_factory=time.time)

    @cached_property
    def services(self) -> Any:
        from bridge.services import Services

        return Services(self.settings)


Collector = Callable[[Context], list[Evidence]]
#: id -> collector; the order is the report's order
COLLECTORS: dict[str, Collector] = {}


def register(check: str) -> Callable[[Collector], Collector]:
    """Add a collector under ``check`` (its evidence ids start with it)."""

    def add(fn: Collector) -> Collector:
        COLLECTORS[check] = fn
        return fn

    return add


# ---------------------------------------------------------------- configuration


@register("config.plaintext")
def plaintext(ctx: Context) -> list[Evidence]:
    from bridge.config import plaintext_warnings

    title = "No hop configured to run without TLS"
    warnings = plaintext_warnings(ctx.settings)
    if warnings:
        return [failed("config.plaintext", title, "; ".join(warnings), warnings=warnings)]
    return [passed("config.plaintext", title, "no section sets allow_plaintext; syslog uses a client certificate")]


@register("tls")
def tls(ctx: Context) -> list[Evidence]:
    return [probes.probe(h) for h in probes.configured_hops(ctx.settings)]


# ---------------------------------------------------------------- authentication


@register("mfa.rule")
def mfa_rule(ctx: Context) -> list[Evidence]:
    m = ctx.settings.mfa
    title = "PACS tokens require a multi-factor login"
    detail = (f"required acr {m.required_acr!r} or amr in {sorted(m.accepted_amr)}; login at most "
              f"{m.max_auth_age_seconds // 3600} h old")
    if not m.required_acr and not m.accepted_amr:
        return [failed("mfa.rule", title, "no acr and no amr required: a password alone would do")]
    return [passed("mfa.rule", title, detail)]


@register("mfa.accounts")
def mfa_accounts(ctx: Context) -> list[Evidence]:
    """Enabled Keycloak accounts without an OTP credential (and without the pending
    CONFIGURE_TOTP action that forces one at the next login)."""
    title = "Every enabled account has a second factor"
    admin = ctx.services.keycloak_admin
    users = admin.get_users({"briefRepresentation": False})
    without: list[str] = []
    enabled = [u for u in users if u.get("enabled", True)]
    for u in enabled:
        creds = admin.get_credentials(u["id"])
        has_otp = any(c.get("type") in ("otp", "webauthn") for c in creds)
        if not has_otp and "CONFIGURE_TOTP" not in (u.get("requiredActions") or []):
            without.append(u.get("username", u["id"]))
    detail = f"{len(enabled)} enabled accounts, {len(without)} without OTP"
    if without:
        shown = ", ".join(sorted(without)[:20]) + (" ..." if len(without) > 20 else "")
        return [failed("mfa.accounts", title, f"{detail}: {shown}", without=sorted(without), enabled=len(enabled))]
    return [passed("mfa.accounts", title, detail, enabled=len(enabled))]


@register("identity")
def identity(ctx: Context) -> list[Evidence]:
    """Unique user identification: PACS rights are keyed by the directory's stable id; local
    Keycloak accounts (no directory link) are listed for the auditor."""
    title = "PACS access is keyed by a unique directory identity"
    from sqlalchemy import func, select

    from bridge.store.models import RoleAssignment

    with ctx.services.engine.connect() as conn:
        blank = conn.execute(select(func.count()).select_from(RoleAssignment)
                             .where((RoleAssignment.subject_id == "") | RoleAssignment.subject_id.is_(None))).scalar()
        subjects = conn.execute(select(func.count(func.distinct(RoleAssignment.subject_id)))).scalar()
    if blank:
        return [failed("identity", title, f"{blank} role assignments without a directory id")]
    local: list[str] = []
    try:
        users = ctx.services.keycloak_admin.get_users({"briefRepresentation": False})
        local = sorted(u.get("username", "") for u in users if not u.get("federationLink"))
    except Exception as exc:  # the rows alone are evidence; the local-account list is a detail
        local = [f"(not listed: {type(exc).__name__})"]
    return [passed("identity", title, f"{subjects} subjects hold PACS roles, each by directory id; "
                   f"local Keycloak accounts: {', '.join(local) or 'none'}", local_accounts=local)]


@register("logoff")
def logoff(ctx: Context) -> list[Evidence]:
    s = ctx.settings
    title = "Idle sessions end automatically"
    out = []
    idle = s.bridge.session_idle_minutes * 60
    ok = idle <= MAX_IDLE_SECONDS
    out.append((passed if ok else failed)("logoff.bridge", title + " (bridge login)",
                                          f"bridge.session_idle_minutes = {s.bridge.session_idle_minutes}"))
    if s.gateway.enabled:
        g = s.gateway.idle_timeout_seconds
        out.append((passed if g <= MAX_IDLE_SECONDS else failed)(
            "logoff.gateway", title + " (PACS gateway)",
            f"gateway.idle_timeout_seconds = {g}, absolute {s.gateway.absolute_lifetime_seconds} s"))
    return out


# ---------------------------------------------------------------- audit and integrity


@register("audit.chain")
def audit_chain(ctx: Context) -> list[Evidence]:
    title = "The audit trail's hash chain and signed checkpoints verify"
    store = ctx.services.audit_store
    report = store.verify(store.key)
    data = {"records": report.records, "checkpoints": report.checkpoints, "last_seq": report.last_seq,
            "signatures_checked": report.signatures_checked}
    if not report.ok:
        return [failed("audit.chain", title, report.message or f"{report.kind} at record {report.seq}", **data)]
    return [passed("audit.chain", title, f"{report.records} records, {report.checkpoints} checkpoints "
                   f"({'signatures checked' if report.signatures_checked else 'no key: signatures not checked'})",
                   **data)]


@register("audit.retention")
def audit_retention(ctx: Context) -> list[Evidence]:
    a = ctx.settings.audit
    out = []
    title = "Audit records are kept six years"
    days = a.retention_days
    out.append((passed if days >= MIN_RETENTION_DAYS else failed)(
        "audit.retention", title, f"audit.retention_days = {days}"))
    archives = sorted(Path(a.archive_dir).glob("*.jsonl*"), key=lambda p: p.stat().st_mtime) \
        if Path(a.archive_dir).is_dir() else []
    atitle = "The newest audit archive verifies on its own"
    if not archives:
        out.append(missing("audit.archive", atitle, f"no archive in {a.archive_dir} yet (nothing has expired)"))
        return out
    from bridge.audit.archive import verify_archive

    newest = archives[-1]
    store = ctx.services.audit_store
    rep = verify_archive(newest, store.key, store.file_keys)
    out.append((passed if rep.ok else failed)("audit.archive", atitle, rep.message, file=str(newest)))
    return out


# ---------------------------------------------------------------- encryption at rest


@register("keys")
def keys(ctx: Context) -> list[Evidence]:
    title = "Secret keys at rest are encrypted under the key-encryption key"
    ring = ctx.services.key_ring
    active = ring.active()  # raises when no key opens: the KEK is wrong
    checkpoint = Path(ctx.settings.audit.checkpoint_key_file)
    try:
        doc = json.loads(checkpoint.read_text())
        encrypted = "private_key_encrypted" in doc
    except (OSError, ValueError):
        encrypted = False
    if not encrypted:
        return [failed("keys", title, f"audit checkpoint key {checkpoint} is not stored encrypted")]
    mode = checkpoint.stat().st_mode & 0o777
    if mode & 0o077:
        return [failed("keys", title, f"audit checkpoint key {checkpoint} has mode {mode:o} (not 0600)")]
    return [passed("keys", title, f"token signing key {active.kid} opens with the KEK; checkpoint key "
                   f"{checkpoint} encrypted, mode {mode:o}")]


@register("storage")
def storage(ctx: Context) -> list[Evidence]:
    """Data at rest: the Orthanc image store (the plugin's encrypted storage area), the paths it
    does not cover (index, temporary directory, viewer cache: on encrypted volumes?), and the
    bridge's own database (SQLCipher, or its file on an encrypted volume)."""
    from bridge.deploy.volumes import ENCRYPTED, MEMORY, NOT_ENCRYPTED, check_orthanc, volume_of

    out: list[Evidence] = []
    path = ctx.settings.compliance.orthanc_config
    title = "Orthanc's image store is encrypted (storage area)"
    if path is None:
        out.append(missing("storage.image_store", title, "compliance.orthanc_config is not set: run the report "
                           "where Orthanc's configuration can be read"))
    else:
        from bridge.pacs.orthanc_plugin import storage_settings
        from bridge.pacs.storage_area import StorageSettings

        config = json.loads(Path(path).read_text(encoding="utf-8"))
        settings = storage_settings(config if isinstance(config, dict) else {})
        encrypted = isinstance(settings, StorageSettings)
        if encrypted:
            out.append(passed("storage.image_store", title, f"encrypted by the plugin in {settings.directory}"))
        else:
            why = settings if isinstance(settings, str) else "no storage object in the plugin's settings"
            out.append(failed("storage.image_store", title, f"NOT encrypted by the plugin: {why}"))
        for check in check_orthanc(config, encrypted_storage=encrypted):
            vol = check.volume
            what = f"storage.{check.role.replace(' ', '-')}"
            vtitle = f"Orthanc's {check.role} is on an encrypted volume"
            detail = f"{vol.path or '-'}: {vol.state} ({vol.detail})"
            if vol.state in (ENCRYPTED, MEMORY):
                out.append(passed(what, vtitle, detail))
            elif vol.state == NOT_ENCRYPTED:
                out.append(failed(what, vtitle, detail))
            else:
                out.append(missing(what, vtitle, detail + "; check it by hand"))
    btitle = "The bridge's database is encrypted at rest"
    url = ctx.settings.store.url
    if url.startswith("sqlite"):
        if ctx.settings.store.sqlcipher:
            out.append(passed("storage.bridge_database", btitle,
                              "SQLite file encrypted with SQLCipher (store.sqlcipher)"))
        else:
            from sqlalchemy.engine import make_url

            vol = volume_of(make_url(url).database or ".")
            detail = f"SQLite without store.sqlcipher; its file is {vol.state} ({vol.detail})"
            out.append((passed if vol.state == ENCRYPTED else failed)("storage.bridge_database", btitle, detail))
    else:
        out.append(missing("storage.bridge_database", btitle, "PostgreSQL: its data directory's volume is on the "
                           "database host; check it there (docs/encryption.md)"))
    return out


# ---------------------------------------------------------------- backups and testing


@register("backups")
def backups(ctx: Context) -> list[Evidence]:
    title = "Backups of the bridge database and keys are recent"
    configured = ctx.settings.compliance.backups
    if not configured:
        return [missing("backups", title, "no backup location configured (compliance.backups)")]
    out = []
    for b in configured:
        files = [Path(p) for p in glob.glob(b.path)]
        check = f"backups.{b.name}"
        if not files:
            out.append(failed(check, f"{title}: {b.name}", f"nothing matches {b.path}"))
            continue
        newest = max(files, key=lambda p: p.stat().st_mtime)
        age_h = (ctx.now - newest.stat().st_mtime) / 3600
        ok = age_h <= b.max_age_hours
        out.append((passed if ok else failed)(check, f"{title}: {b.name}",
                                              f"{newest} is {age_h:.1f} h old (limit {b.max_age_hours} h)"))
    return out


def test_report_path(ctx: Context) -> Path:
    """The JUnit file of this release's test run (`make test` writes it under its version)."""
    if ctx.test_report is not None:
        return ctx.test_report
    return Path(ctx.settings.compliance.test_report_dir) / f"pacs-sso-bridge-{ctx.version}.xml"


@register("tests")
def test_report(ctx: Context) -> list[Evidence]:
    title = f"The test suite of this release ({ctx.version}) passed"
    path = test_report_path(ctx)
    if not path.is_file():
        return [missing("tests", title, f"no test report at {path}")]
    root = ET.parse(path).getroot()  # noqa: S314 - our own file, written by pytest
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    versions = {p.get("value") for s in suites for p in s.iter("property") if p.get("name") == "version"}
    if versions and versions != {ctx.version}:
        other = ", ".join(sorted(v or "" for v in versions))
        return [failed("tests", title, f"{path} is the report of version {other}", **totals)]
    when = dt.datetime.fromtimestamp(os.path.getmtime(path), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    detail = (f"{totals['tests']} tests, {totals['failures']} failures, {totals['errors']} errors, "
              f"{totals['skipped']} skipped ({path}, {when})")
    if totals["failures"] or totals["errors"] or not totals["tests"]:
        return [failed("tests", title, detail, **totals)]
    return [passed("tests", title, detail, **totals)]


# ---------------------------------------------------------------- reviews and emergency access

#: a monthly review cycle is late after this many days without a completed campaign
REVIEW_MAX_AGE_DAYS = 35
#: a break-glass access not reviewed within this many days is a failing control
BREAK_GLASS_REVIEW_DAYS = 7


@register("review")
def review(ctx: Context) -> list[Evidence]:
    """The last access review: started within the cycle, and how much of it is still undecided."""
    from sqlalchemy import func, select

    from bridge.store.models import ReviewCampaign, ReviewItem

    title = "Access rights are reviewed regularly (recertification)"
    with ctx.services.engine.connect() as conn:
        last = conn.execute(select(ReviewCampaign).order_by(ReviewCampaign.started_at.desc()).limit(1)).first()
        if last is None:
            return [failed("review", title, "no access review has ever run (pacs-bridge review run)")]
        total, undecided = conn.execute(
            select(func.count(), func.count().filter(ReviewItem.decision.is_(None)))
            .where(ReviewItem.campaign_id == last.id)).one()
    started = last.started_at.timestamp()
    age_days = (ctx.now - started) / 86400
    detail = (f"campaign {last.id} started {last.started_at:%Y-%m-%d} ({age_days:.0f} days ago), {total} items, "
              f"{undecided} undecided; deadline {last.deadline:%Y-%m-%d}")
    data = {"campaign": last.id, "items": total, "undecided": undecided}
    if age_days > REVIEW_MAX_AGE_DAYS:
        return [failed("review", title, f"the last review is overdue: {detail}", **data)]
    if undecided and ctx.now > last.deadline.timestamp():
        return [failed("review", title, f"items left undecided past the deadline: {detail}", **data)]
    return [passed("review", title, detail, **data)]


@register("breakglass")
def breakglass(ctx: Context) -> list[Evidence]:
    """Emergency access: a procedure exists (roles with the emergency capability) and every use is
    reviewed by another person within a week."""
    import datetime as _dt

    from sqlalchemy import func, select

    from bridge.store.models import BreakGlassGrant

    out: list[Evidence] = []
    title = "An emergency access procedure exists (break-glass)"
    policy_file = ctx.settings.sync.policy_file
    if policy_file is None:
        out.append(missing("breakglass.procedure", title, "sync.policy_file is not set"))
    else:
        from bridge.policy.loader import load_policy

        pol = load_policy(policy_file)
        roles = sorted(pol.emergency_roles()) if pol.emergency is not None else []
        if roles:
            out.append(passed("breakglass.procedure", title, f"roles with the emergency capability: "
                              f"{', '.join(roles)}; grants last {pol.emergency.lifetime_minutes} min"))  # type: ignore[union-attr]
        else:
            out.append(failed("breakglass.procedure", title, "the policy gives no role the emergency capability"))
    rtitle = "Every emergency access is reviewed by another person"
    cutoff = _dt.datetime.fromtimestamp(ctx.now - BREAK_GLASS_REVIEW_DAYS * 86400, _dt.UTC)
    with ctx.services.engine.connect() as conn:
        open_total, overdue = conn.execute(
            select(func.count(), func.count().filter(BreakGlassGrant.created_at < cutoff))
            .where(BreakGlassGrant.review_state == "open")).one()
    detail = f"{open_total} open post-hoc reviews, {overdue} older than {BREAK_GLASS_REVIEW_DAYS} days"
    out.append((failed if overdue else passed)("breakglass.reviews", rtitle, detail,
                                                open=open_total, overdue=overdue))
    return out
