"""Who viewed this patient: every access to one patient's studies in the audit trail (GDPR Art. 15).

A patient asking who saw their images gets the list of recorded accesses, allowed and refused:
who (the user's stable id and username), when, what (the event type, the permission the PACS
checked, the request's method and path), for what purpose (the PACS token's IHE IUA
``purpose_of_use``, recorded by the plugin in ``details.purpose_of_use``) and from which address.

What counts as an access to the patient: a record naming the patient as a participant object (in
any position: :meth:`bridge.audit.store.AuditStore.mentioning`), and a record naming one of the
patient's studies without naming the patient (the plugin records the study alone when it could not
resolve the patient).  The patient's studies are those named in records whose every patient object
is this patient, so a study is never attributed to the patient through a record about a listing
of several patients.  IDs are looked up as they were stored: a credential-looking PatientID
(``Basic 4711``) is in the trail as its redaction marker and is found by the value.

The same function serves ``pacs-bridge audit patient-report`` and the review web page; reading
the report is itself audited (DICOM 110101 Audit Log Used) by :func:`audited_report`, like
``audit query``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.audit.export import csv_cell
from bridge.audit.store import AuditStore, object_ids, search_terms
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, ObjectKind, Outcome

FORMATS = ("text", "json", "csv")
#: the columns of the CSV form, in order (also the keys of :meth:`Access.to_dict`)
COLUMNS = ("time", "allowed", "type", "outcome", "user_id", "username", "client_id", "network_address",
           "purpose_of_use", "permission", "method", "paths", "reason", "requests", "studies", "pacs",
           "event_id", "seq")


@dataclass(frozen=True)
class Access:
    """One recorded access (or refused attempt) to the patient's studies."""

    seq: int
    event_id: str
    time: str
    type: str
    outcome: int
    allowed: bool
    user_id: str | None
    username: str | None
    client_id: str | None
    network_address: str | None
    #: IHE IUA purpose of use codes of the token (``TREAT``, ``BTG``, ...); empty when not recorded
    purpose_of_use: tuple[str, ...]
    permission: str | None
    method: str | None
    paths: tuple[str, ...]
    #: why it was refused (or the plugin's description of an allowed request)
    reason: str | None
    #: how many requests this record stands for (the plugin coalesces a viewer's many requests)
    requests: int | None
    studies: tuple[str, ...]
    pacs: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in COLUMNS}


@dataclass
class PatientReport:
    patient_id: str
    since: dt.datetime | None
    until: dt.datetime | None
    generated_at: dt.datetime = field(default_factory=ev.utcnow)
    accesses: list[Access] = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        """Everyone who accessed or tried to, by username (else user id), sorted."""
        return sorted({a.username or a.user_id or "(unknown)" for a in self.accesses})

    def summary(self) -> dict[str, Any]:
        return {"accesses": sum(a.allowed for a in self.accesses),
                "denied": sum(not a.allowed for a in self.accesses), "users": self.users}

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "since": ev.format_time(self.since) if self.since else None,
            "until": ev.format_time(self.until) if self.until else None,
            "generated_at": ev.format_time(self.generated_at),
            "summary": self.summary(),
            "accesses": [a.to_dict() for a in self.accesses],
        }


def _purposes(details: Mapping[str, Any]) -> tuple[str, ...]:
    raw = details.get("purpose_of_use")
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list):
        return tuple(str(x) for x in raw if isinstance(x, str | int))
    return ()


def _access(row: Mapping[str, Any]) -> Access:
    try:
        body = json.loads(row["body"])
    except (ValueError, TypeError):
        body = {}
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    paths = details.get("paths")
    requests = details.get("requests")
    outcome = int(row["outcome"])
    return Access(
        seq=int(row["seq"]), event_id=row["event_id"], time=row["time"], type=row["type"], outcome=outcome,
        allowed=row["type"] != AuditEventType.ACCESS_DENIED.value and outcome == Outcome.SUCCESS,
        user_id=row["actor_user"], username=row["actor_username"], client_id=row["client_id"],
        network_address=row["network_address"], purpose_of_use=_purposes(details),
        permission=details.get("permission") if isinstance(details.get("permission"), str) else None,
        method=details.get("method") if isinstance(details.get("method"), str) else None,
        paths=tuple(str(p) for p in paths) if isinstance(paths, list) else (),
        reason=details.get("reason") if isinstance(details.get("reason"), str) else body.get("description"),
        requests=requests if isinstance(requests, int) and not isinstance(requests, bool) else None,
        studies=tuple(object_ids(dict(row), ObjectKind.STUDY)),
        pacs=details.get("pacs") if isinstance(details.get("pacs"), str) else None,
    )


#: records that mention a patient without being an access to their data: an auditor's read
NOT_ACCESSES = frozenset({AuditEventType.AUDIT_LOG_USED.value, AuditEventType.AUDIT_INPUT_REJECTED.value})


def patient_accesses(store: AuditStore, patient_id: str, *, since: dt.datetime | None = None,
                     until: dt.datetime | None = None) -> list[Access]:
    """Every recorded access to ``patient_id``'s studies in [since, until), oldest first."""
    terms = set(search_terms(patient_id, "patient_id"))
    naming = store.mentioning(ObjectKind.PATIENT, [patient_id], since=since, until=until)
    studies: set[str] = set()
    for r in naming:
        patients = object_ids(r, ObjectKind.PATIENT)
        if patients and set(patients) <= terms:  # about this patient only: its studies are theirs
            studies.update(object_ids(r, ObjectKind.STUDY))
    rows = {r["seq"]: r for r in naming}
    if studies:
        for r in store.mentioning(ObjectKind.STUDY, sorted(studies), since=since, until=until):
            if not object_ids(r, ObjectKind.PATIENT):  # the study alone: the patient was not resolved
                rows[r["seq"]] = r
    return [_access(r) for _, r in sorted(rows.items()) if r["type"] not in NOT_ACCESSES]


def patient_report(store: AuditStore, patient_id: str, *, since: dt.datetime | None = None,
                   until: dt.datetime | None = None) -> PatientReport:
    return PatientReport(patient_id, since, until,
                         accesses=patient_accesses(store, patient_id, since=since, until=until))


def audited_report(store: AuditStore, patient_id: str, actor: ev.Actor, *, since: dt.datetime | None = None,
                   until: dt.datetime | None = None, fmt: str = "json",
                   correlation_id: str | None = None) -> PatientReport:
    """:func:`patient_report`, recorded as an audit event of the reader (DICOM 110101 Audit Log
    Used) after it was built: who asked for which patient, the period and how many accesses."""
    report = patient_report(store, patient_id, since=since, until=until)
    store.append(ev.AuditEvent(
        AuditEventType.AUDIT_LOG_USED, actor=actor, correlation_id=correlation_id,
        objects=(ev.ParticipantObject(ObjectKind.AUDIT_LOG, "audit_events", "patient-report"),),
        details={"action": "patient-report", "patient": patient_id, "format": fmt,
                 "since": ev.format_time(since) if since else None,
                 "until": ev.format_time(until) if until else None, "accesses": len(report.accesses)},
        description="Who viewed this patient (GDPR Art. 15 access report)"))
    return report


# ---------------------------------------------------------------------------- output


def to_json(report: PatientReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def to_csv(report: PatientReport) -> str:
    """One row per access; cells a spreadsheet would run as a formula are neutralised."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(COLUMNS)
    for a in report.accesses:
        row = a.to_dict()
        cells = []
        for c in COLUMNS:
            v = row[c]
            v = " ".join(map(str, v)) if isinstance(v, list) else "" if v is None else str(v)
            cells.append(v if c in ("seq", "outcome", "requests") else csv_cell(v))
        w.writerow(cells)
    return out.getvalue()


def _text_cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    return "-" if value in (None, "") else ev.escape_unsafe(str(value))


def to_text(report: PatientReport) -> str:
    """A short human-readable form: a header, then one line per access."""
    d = report.to_dict()
    s = d["summary"]
    lines = [f"Accesses to the studies of patient {ev.escape_unsafe(report.patient_id)}",
             f"period: {d['since'] or 'beginning of the trail'} .. {d['until'] or 'now'}; "
             f"generated {d['generated_at']}",
             f"{s['accesses']} allowed, {s['denied']} refused, by {len(s['users'])} user(s): "
             + (", ".join(ev.escape_unsafe(u) for u in s["users"]) or "-"), ""]
    for a in report.accesses:
        verdict = "ALLOWED" if a.allowed else "REFUSED"
        lines.append(" ".join([
            a.time, verdict, a.type, f"user={_text_cell(a.username)}", f"id={_text_cell(a.user_id)}",
            f"purpose={_text_cell(a.purpose_of_use)}", f"permission={_text_cell(a.permission)}",
            f"route={_text_cell(a.method)} {_text_cell(a.paths)}", f"from={_text_cell(a.network_address)}",
            *([f"reason={_text_cell(a.reason)}"] if not a.allowed else []),
        ]))
    if not report.accesses:
        lines.append("(no recorded access)")
    return "\n".join(lines) + "\n"


def render(report: PatientReport, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return {"text": to_text, "json": to_json, "csv": to_csv}[fmt](report)

