"""One piece of evidence: what was checked, and whether it held.

Three outcomes, never two: ``pass``, ``fail`` and ``missing`` (the evidence could not be
collected: the test report is absent, Keycloak did not answer, no review has run yet).  A control
with any failing or missing evidence is never shown as passed -- an auditor must see the gap.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    MISSING = "missing"


#: how statuses combine: the worst one wins
_RANK = {Status.PASS: 0, Status.MISSING: 1, Status.FAIL: 2}


def worst(statuses: Iterable[Status]) -> Status:
    """The combined status: fail over missing over pass; nothing at all is missing evidence."""
    out: Status | None = None
    for s in statuses:
        if out is None or _RANK[s] > _RANK[out]:
            out = s
    return out if out is not None else Status.MISSING


@dataclass(frozen=True)
class Evidence:
    """The outcome of one check (``check`` is its stable id, e.g. ``tls.keycloak``)."""

    check: str
    title: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "title": self.title, "status": self.status.value,
                "detail": self.detail, "data": self.data}


def passed(check: str, title: str, detail: str, **data: Any) -> Evidence:
    return Evidence(check, title, Status.PASS, detail, data)


def failed(check: str, title: str, detail: str, **data: Any) -> Evidence:
    return Evidence(check, title, Status.FAIL, detail, data)


def missing(check: str, title: str, detail: str, **data: Any) -> Evidence:
    return Evidence(check, title, Status.MISSING, detail, data)


def guarded(check: str, title: str, collect: Callable[[], list[Evidence]]) -> list[Evidence]:
    """Run one collector; an exception becomes missing evidence naming the check (one broken
    check must not hide the others, and must never read as passed)."""
    try:
        return collect()
    except Exception as exc:  # any failure to collect is a gap in the evidence
        return [missing(check, title, f"could not be collected: {type(exc).__name__}: {exc}")]
