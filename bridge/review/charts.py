"""The review page's charts, drawn on the server (matplotlib, Agg backend) as SVG: no script in
the browser.  Each chart comes with a text alternative (the same figures as a table on the page)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any


def _figure(width: float = 7.0, height: float = 3.2) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=96)


def _svg(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue()


def roles_per_department(per_dept: Mapping[str, Mapping[str, int]]) -> bytes:
    """Stacked bars: for each department, how many hold each role."""
    fig = _figure()
    ax = fig.subplots()
    depts = sorted(per_dept)
    roles = sorted({r for d in per_dept.values() for r in d})
    bottom = [0] * len(depts)
    for role in roles:
        values = [per_dept[d].get(role, 0) for d in depts]
        ax.bar(depts, values, bottom=bottom, label=role)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("role assignments")
    ax.set_title("Roles per department")
    ax.tick_params(axis="x", labelrotation=30)
    if roles:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)


def over_time(points: Sequence[tuple[str, int, int]]) -> bytes:
    """Lines: dormant and privileged accounts at each campaign (label, dormant, privileged)."""
    fig = _figure()
    ax = fig.subplots()
    labels = [p[0] for p in points]
    ax.plot(labels, [p[1] for p in points], marker="o", label="dormant")
    ax.plot(labels, [p[2] for p in points], marker="s", label="privileged")
    ax.set_ylabel("accounts")
    ax.set_title("Dormant and privileged accounts per review")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize="small")
    return _svg(fig)
