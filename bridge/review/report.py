"""A campaign as JSON and CSV (the page's exports and ``pacs-bridge review export``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from bridge.audit.export import csv_cell
from bridge.core.audit_events import format_time
from bridge.store.models import ReviewCampaign, ReviewItem, ReviewUser

CSV_COLUMNS = ("item", "username", "subject_id", "department", "role", "source", "group", "rule", "queue",
               "last_login", "last_access", "flags", "decision", "comment", "decided_by", "decided_at", "escalated_at")


def _t(value: Any) -> str | None:
    return format_time(value) if value is not None else None


def campaign_dict(camp: ReviewCampaign) -> dict[str, Any]:
    return {"id": camp.id, "started_at": _t(camp.started_at), "deadline": _t(camp.deadline), "status": camp.status,
            "started_by": camp.started_by, "policy": camp.policy_source, "summary": camp.summary}


def item_dict(i: ReviewItem) -> dict[str, Any]:
    return {"id": i.id, "username": i.username, "subject_id": i.subject_id, "department": i.department,
            "role": i.role, "source": i.source, "group": i.source_group_dn, "rule": i.rule_id, "queue": i.queue,
            "decision": i.decision, "comment": i.comment, "decided_by": i.decided_by_name,
            "decided_at": _t(i.decided_at), "escalated_at": _t(i.escalated_at)}


def user_dict(u: ReviewUser) -> dict[str, Any]:
    return {"username": u.username, "subject_id": u.subject_id, "department": u.department,
            "last_login": u.last_login, "last_access": u.last_access, "flags": list(u.flags or []),
            "evidence": u.evidence or {}}


def to_json(camp: ReviewCampaign, users: Sequence[ReviewUser], items: Sequence[ReviewItem]) -> str:
    return json.dumps({"campaign": campaign_dict(camp), "users": [user_dict(u) for u in users],
                       "items": [item_dict(i) for i in items]}, indent=2, ensure_ascii=False)


def to_csv(users: Sequence[ReviewUser], items: Sequence[ReviewItem]) -> str:
    """One row per item with its user's activity and flags; formula-like cells neutralised."""
    by_subject = {u.subject_id: u for u in users}
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for i in items:
        u = by_subject.get(i.subject_id)
        row = {**item_dict(i), "item": str(i.id), "last_login": u.last_login if u else None,
               "last_access": u.last_access if u else None, "flags": " ".join(u.flags or []) if u else ""}
        w.writerow(["" if row[c] is None else csv_cell(str(row[c])) for c in CSV_COLUMNS])
    return out.getvalue()
