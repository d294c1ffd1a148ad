"""The access review page: ``/review/``, server-rendered HTML for department heads and the
privacy officer (docs/governance.md, "The access review cycle").

Who gets in: a live gateway session (bridge/web/gateway: Keycloak login with a second factor,
checked again on every renewal and here on the session's token), *and* the reviewer right: being
a member of a reviewer queue of the current campaign (the policy's ``reviewers:`` groups as the
campaign recorded them).  Everybody else gets 403, audited.

What a reviewer sees: the campaign, two charts drawn on the server (matplotlib SVG: roles per
department; dormant and privileged accounts over the campaigns) with the same figures as tables,
and the items of their queues (the privacy officer: also every escalated item), each with the
user's flags, last login and last PACS access, and a form: keep or revoke, a comment, for a
revoke an optional end date.  Exports: CSV and JSON of the same items.  The privacy officer's
page also answers "who viewed this patient" (bridge/audit/patient_report.py).

Forms: POST only, same-origin (``Origin`` / ``Sec-Fetch-Site``, the gateway's rule) and a CSRF
token bound to the session; every field exactly once (a repeated field is refused, never
"first wins"); the decision rules themselves are :func:`bridge.review.campaign.decide`'s.
Every view of the page, export and chart is recorded (DICOM 110101 Audit Log Used), every
decision by ``decide``.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any

from flask import Blueprint, Flask, Response, current_app, redirect, render_template_string, request

from bridge.core import audit_events as ev
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType, ObjectKind
from bridge.policy.loader import PRIVACY_OFFICER
from bridge.web.client import client_address
from bridge.web.gateway import pages
from bridge.web.gateway.rules import same_origin
from bridge.web.limits import limit

PREFIX = "/review"
CLIENT_ID = "pacs-review"
FIELDS = ("csrf_token", "decision", "comment", "until")

_PAGE = """<h1>Access review {{ camp.id }}</h1>
{% if message %}<p role="status"><strong>{{ message }}</strong></p>{% endif %}
<p>Started {{ camp.started_at.date() }} ({{ camp.started_by }}); answers are due by
<strong>{{ camp.deadline.date() }}</strong>; status {{ camp.status }}.
You review: {{ queues|join(', ') }}.</p>
<p>Export your items: <a href="{{ prefix }}/export.csv">CSV</a> &middot;
<a href="{{ prefix }}/export.json">JSON</a></p>
<section aria-labelledby="charts"><h2 id="charts">Figures</h2>
<figure><img src="{{ prefix }}/charts/roles.svg" alt="Roles per department; the same figures are in the table below">
<figcaption>Roles per department (this review)</figcaption></figure>
<table><caption>Role assignments per department</caption>
<thead><tr><th scope="col">Department</th><th scope="col">Role</th><th scope="col">Assignments</th></tr></thead>
<tbody>
{% for dept, roles in per_dept %}{% for role, n in roles %}
<tr><td>{{ dept }}</td><td>{{ role }}</td><td>{{ n }}</td></tr>
{% endfor %}{% endfor %}</tbody></table>
<figure><img src="{{ prefix }}/charts/trend.svg"
 alt="Dormant and privileged accounts per review; figures in the table below">
<figcaption>Dormant and privileged accounts over time</figcaption></figure>
<table><caption>Dormant and privileged accounts per review</caption>
<thead><tr><th scope="col">Review</th><th scope="col">Dormant</th><th scope="col">Privileged</th></tr></thead><tbody>
{% for label, d, p in trend %}<tr><td>{{ label }}</td><td>{{ d }}</td><td>{{ p }}</td></tr>{% endfor %}
</tbody></table></section>
<section aria-labelledby="items"><h2 id="items">Your items ({{ items|length }})</h2>
{% for i in items %}{% set u = users.get(i.subject_id) %}
<article aria-labelledby="item-{{ i.id }}">
<h3 id="item-{{ i.id }}">{{ i.username }} &mdash; {{ i.role }}{% if i.escalated_at %} (escalated){% endif %}</h3>
<dl>
<dt>Department</dt><dd>{{ i.department or '-' }}</dd>
<dt>Why</dt><dd>{% if i.source == 'policy' %}rule {{ i.rule_id }} via group {{ i.source_group_dn }}
{% elif i.source == 'excepted' %}revoked in an earlier review; the directory still grants it
(rule {{ i.rule_id }}, {{ i.source_group_dn }})
{% elif i.source == 'keycloak-console' %}given by hand in the Keycloak console, outside the policy
{% else %}assigned by hand in the bridge{% endif %}</dd>
<dt>Last login</dt><dd>{{ (u.last_login if u else None) or 'never recorded' }}</dd>
<dt>Last PACS access</dt><dd>{{ (u.last_access if u else None) or 'never recorded' }}</dd>
<dt>Flags</dt><dd>{{ (u.flags if u else [])|join(', ') or 'none' }}</dd>
</dl>
{% if i.decision %}<p>Decided: <strong>{{ i.decision }}</strong> by {{ i.decided_by_name }}
on {{ i.decided_at.date() }}: {{ i.comment }}</p>
{% else %}<form method="post" action="{{ prefix }}/items/{{ i.id }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<fieldset><legend>Decision for {{ i.username }}, {{ i.role }}</legend>
<input type="radio" id="keep-{{ i.id }}" name="decision" value="keep"><label for="keep-{{ i.id }}">Keep</label>
<input type="radio" id="revoke-{{ i.id }}" name="decision" value="revoke"><label for="revoke-{{ i.id }}">Revoke</label>
</fieldset>
<p><label for="comment-{{ i.id }}">Comment (required)</label><br>
<textarea id="comment-{{ i.id }}" name="comment" rows="2" cols="60" maxlength="2000" required></textarea></p>
<p><label for="until-{{ i.id }}">Revoked until (optional; empty: until the next review)</label>
<input type="date" id="until-{{ i.id }}" name="until"></p>
<button type="submit" id="submit-{{ i.id }}">Record decision</button>
</form>{% endif %}
</article>
{% else %}<p>No items for you in this review.</p>{% endfor %}
</section>
{% if officer %}<section aria-labelledby="patient"><h2 id="patient">Who viewed a patient (GDPR Art. 15)</h2>
<form method="get" action="{{ prefix }}/patient"><label for="pid">PatientID</label>
<input id="pid" name="patient_id" required maxlength="128"> <button type="submit">Report</button></form>
</section>
<section aria-labelledby="compliance"><h2 id="compliance">Compliance evidence (HIPAA 164.312, GDPR Art. 32)</h2>
<p><a href="{{ prefix }}/compliance">The compliance report, collected now from the running deployment</a></p>
</section>{% endif %}
"""

_PATIENT = """<h1>Accesses to patient {{ r.patient_id }}</h1>
<p>{{ s.accesses }} allowed, {{ s.denied }} refused, by {{ s.users|length }} user(s).
<a href="{{ prefix }}/">Back</a></p>
<table><caption>Every recorded access to this patient's studies</caption>
<thead><tr><th scope="col">When</th><th scope="col">Allowed</th><th scope="col">Who</th>
<th scope="col">Purpose</th>
<th scope="col">What</th><th scope="col">From</th></tr></thead><tbody>
{% for a in r.accesses %}<tr><td>{{ a.time }}</td><td>{{ 'yes' if a.allowed else 'refused' }}</td>
<td>{{ a.username or a.user_id }}</td><td>{{ a.purpose_of_use|join(',') }}</td>
<td>{{ a.type }} {{ a.method or '' }} {{ a.paths|join(' ') }}</td><td>{{ a.network_address or '' }}</td></tr>
{% else %}<tr><td colspan="6">No recorded access.</td></tr>{% endfor %}</tbody></table>
"""


def init_app(app: Flask) -> None:
    """Register ``/review/`` (needs the gateway: its login and sessions)."""
    bp = Blueprint("review", __name__, url_prefix=PREFIX)
    bp.add_url_rule("/", "page", _page, methods=["GET"])
    bp.add_url_rule("/items/<int:item_id>", "decide", _decide, methods=["POST"])
    bp.add_url_rule("/export.<any(csv, json):fmt>", "export", _export, methods=["GET"])
    bp.add_url_rule("/charts/<any(roles, trend):name>.svg", "chart", _chart, methods=["GET"])
    bp.add_url_rule("/patient", "patient", _patient, methods=["GET"])
    bp.add_url_rule("/compliance", "compliance", _compliance, methods=["GET"])
    app.register_blueprint(bp)


def _services() -> Any:
    from bridge.services import of_app

    return of_app(current_app)


def _gw() -> Any:
    from bridge.web.gateway import EXTENSION

    return current_app.extensions[EXTENSION]


def _issuer() -> str:
    from bridge.audit.keycloak_events import bridge_issuer

    return bridge_issuer(current_app.config["BRIDGE_SETTINGS"])


def _actor(login: Any) -> ev.Actor:
    return ev.Actor(user_id=f"{login.subject_id}@{_issuer()}", username=login.username, client_id=CLIENT_ID,
                    network_address=client_address())


def _audit_use(login: Any, action: str, **details: Any) -> None:
    _services().audit_store.append(ev.AuditEvent(
        AuditEventType.AUDIT_LOG_USED, actor=_actor(login),
        objects=(ev.ParticipantObject(ObjectKind.AUDIT_LOG, "review", action),),
        details={"action": action, **details}))


def _deny(login: Any, status: int, why: str) -> Response:
    """Refuse, audited: with the reviewer's identity when there is a session; without one (anyone
    can send a cross-site POST) through the gateway's sampler, so a flood cannot fill the trail."""
    if login is None:
        _gw().refusals({"reason": f"review: {why}", "path": request.path[:300]})
        return pages.message("Access review", why, status, PREFIX + "/", "Back to the review")
    _services().audit_store.append(ev.AuditEvent(
        AuditEventType.ACCESS_DENIED, None, _actor(login),
        (ev.ParticipantObject(ObjectKind.AUDIT_LOG, "review", request.path[:200]),),
        details={"reason": f"review: {why}", "method": request.method}))
    return pages.message("Access review", why, status, PREFIX + "/", "Back to the review")


def _reviewer() -> tuple[Any, Any, set[str]] | Response:
    """(login, campaign, queues) of a reviewer with a live MFA session, or the refusal."""
    from bridge.review import campaign
    from bridge.web.gateway import views

    if _gw_missing():
        return pages.message("Access review", "The access review page needs the gateway (gateway.orthanc_url).", 404)
    login = views.current_login()
    if isinstance(login, Response):
        return login
    verdict = mfa.check(views.session_claims(login), _gw().service.mfa_rule)
    if not verdict.ok:
        return _deny(login, 401, f"a second factor is required ({verdict.reason})")
    engine = _services().engine
    camp = campaign.current(engine)
    if camp is None:
        return _deny(login, 403, "no access review has been started")
    queues = campaign.queues_of(engine, camp.id, login.subject_id)
    if not queues:
        return _deny(login, 403, "you are not a reviewer in the current access review")
    return login, camp, queues


def _gw_missing() -> bool:
    from bridge.web.gateway import EXTENSION

    return EXTENSION not in current_app.extensions


@limit("login")
def _page() -> Response:
    from bridge.review import campaign

    got = _reviewer()
    if isinstance(got, Response):
        return got
    login, camp, queues = got
    engine = _services().engine
    items = campaign.visible_items(engine, camp.id, login.subject_id)
    users = {u.subject_id: u for u in campaign.users_of(engine, camp.id, sorted({i.subject_id for i in items}))}
    per_dept = sorted((d, sorted(r.items())) for d, r in (camp.summary.get("roles_per_department") or {}).items())
    _audit_use(login, "review-page", campaign=camp.id, items=len(items))
    from bridge.web.gateway.views import csrf_for

    message = {"decided": "Your decision was recorded."}.get(request.args.get("status", ""), "")
    body = render_template_string(
        _PAGE, camp=camp, queues=sorted(queues), items=items, users=users, per_dept=per_dept,
        trend=_trend(engine), prefix=PREFIX, csrf=csrf_for(_gw(), login), officer=PRIVACY_OFFICER in queues,
        message=message)
    return pages.page(f"Access review {camp.id}", body)


def _trend(engine: Any) -> list[tuple[str, int, int]]:
    from bridge.review import campaign

    return [(f"#{c.id} {c.started_at.date()}", int((c.summary.get("flags") or {}).get("dormant", 0)),
             int((c.summary.get("flags") or {}).get("privileged", 0))) for c in campaign.history(engine)]


def _one(name: str) -> str | None:
    """The single value of a form field; None when absent; ValueError when repeated."""
    values = request.form.getlist(name)
    if len(values) > 1:
        raise ValueError(f"field {name!r} given {len(values)} times")
    return values[0] if values else None


@limit("login")
def _decide(item_id: int) -> Response:
    from bridge.review import campaign
    from bridge.web.gateway.views import csrf_for

    ok, why = same_origin("POST", request.headers, _gw().public_origin)
    if not ok:
        return _deny(None, 403, f"decision refused: {why}")
    got = _reviewer()
    if isinstance(got, Response):
        return got
    login, _camp, _queues = got
    try:
        unknown = sorted(set(request.form) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown field {unknown[0][:40]!r}")
        token, decision, comment, until = (_one(f) for f in FIELDS)
    except ValueError as exc:
        return _deny(login, 400, f"decision refused: {exc}")
    if not hmac.compare_digest(csrf_for(_gw(), login).encode(), (token or "").encode()):
        return _deny(login, 403, "decision refused: missing or wrong csrf_token (use the form)")
    until_at = None
    if until:
        try:
            until_at = dt.datetime.combine(dt.date.fromisoformat(until), dt.time(), dt.UTC)
        except ValueError:
            return _deny(login, 400, "decision refused: the end date is not a date (YYYY-MM-DD)")
    try:
        campaign.decide(_services().engine, item_id, decision or "", comment or "",
                        campaign.Reviewer(login.subject_id, login.username, _actor(login)),
                        audit=_services().audit_store, until=until_at)
    except campaign.DecisionRefused as exc:  # audited by decide
        return pages.message("Access review", f"Not recorded: {exc}", exc.status, PREFIX + "/", "Back to the review")
    return pages.secure(redirect(f"{PREFIX}/?status=decided#item-{item_id}", code=303))


def _export(fmt: str) -> Response:
    from bridge.review import campaign, report

    got = _reviewer()
    if isinstance(got, Response):
        return got
    login, camp, _queues = got
    engine = _services().engine
    items = campaign.visible_items(engine, camp.id, login.subject_id)
    users = campaign.users_of(engine, camp.id, sorted({i.subject_id for i in items}))
    _audit_use(login, "review-export", campaign=camp.id, format=fmt, items=len(items))
    body = report.to_csv(users, items) if fmt == "csv" else report.to_json(camp, users, items)
    resp = Response(body, mimetype="text/csv" if fmt == "csv" else "application/json")
    resp.headers["Content-Disposition"] = f'attachment; filename="access-review-{camp.id}.{fmt}"'
    return pages.secure(resp)


def _chart(name: str) -> Response:
    from bridge.review import charts

    got = _reviewer()
    if isinstance(got, Response):
        return got
    _login, camp, _queues = got
    if name == "roles":
        svg = charts.roles_per_department(camp.summary.get("roles_per_department") or {})
    else:
        svg = charts.over_time(_trend(_services().engine))
    resp = pages.secure(Response(svg, mimetype="image/svg+xml"))
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return resp


def _patient() -> Response:
    """Who viewed this patient, for the privacy officer (the report is audited like the CLI's)."""
    from bridge.audit.patient_report import audited_report

    got = _reviewer()
    if isinstance(got, Response):
        return got
    login, _camp, queues = got
    if PRIVACY_OFFICER not in queues:
        return _deny(login, 403, "the patient report is for the privacy officer")
    values = request.args.getlist("patient_id")
    if len(values) != 1 or not values[0].strip() or len(values[0]) > 128:
        return _deny(login, 400, "give exactly one patient_id")
    report = audited_report(_services().audit_store, values[0], _actor(login), fmt="html")
    body = render_template_string(_PATIENT, r=report, s=report.summary(), prefix=PREFIX)
    return pages.page("Who viewed this patient", body)


@limit("login")
def _compliance() -> Response:
    """The compliance evidence report, live, for the privacy officer: the same collectors and control
    map as `pacs-bridge compliance report` (bridge/compliance/).  Collecting probes every configured
    hop and asks Keycloak, so it is rate-limited like a login; reading the audit trail is audited."""
    from bridge.compliance import report as compliance
    from bridge.compliance.checks import Context

    got = _reviewer()
    if isinstance(got, Response):
        return got
    login, _camp, queues = got
    if PRIVACY_OFFICER not in queues:
        return _deny(login, 403, "the compliance report is for the privacy officer")
    if request.args:
        return _deny(login, 400, "the compliance report takes no parameters")
    ctx = Context(current_app.config["BRIDGE_SETTINGS"], compliance.release())
    ctx.__dict__["services"] = _services()  # the app's own engine and stores, not a second set
    rep = compliance.build(ctx)
    _audit_use(login, "compliance-report", status=rep.status.value)
    resp = Response(rep.to_html(), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    resp.headers["Cache-Control"] = "no-store"
    return resp
