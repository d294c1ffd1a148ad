"""The gateway's break-glass pages: the request form, the fresh login it needs, the review queue.

``<prefix>/break-glass``                 GET: the form; POST (CSRF, same origin): checks the role and
                                         the per-user limit, then sends the browser to Keycloak for a
                                         NEW login (``prompt=login``, ``max_age=0``, the MFA
                                         ``acr_values``); the grant is given in the login callback
                                         (:func:`complete`) only if that login is multi-factor, of the
                                         same person, and dated after the request
``<prefix>/break-glass/reviews``         GET: the queue (``audit-logs``)
``<prefix>/break-glass/reviews/<id>``    POST (CSRF, same origin): close an item (never one's own)

The request waits in the Flask session (signed) during the login; the old gateway session is
ended when the new one starts (its sweep would otherwise end the Keycloak session both share).
Server-rendered, no script (the gateway's page rules: :mod:`bridge.web.gateway.pages`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, redirect, render_template_string, request, session, url_for

from bridge.breakglass.service import (
    OPEN,
    PURPOSE,
    REVIEW_PERMISSION,
    VERDICTS,
    BreakGlassRefused,
    Target,
    check_reason,
)
from bridge.core import grants as grants_mod
from bridge.oidc import session as sess
from bridge.tokens.claims import Subject
from bridge.web import breakglass as api
from bridge.web.client import client_address
from bridge.web.gateway import pages, rules
from bridge.web.gateway import views as gw_views
from bridge.web.gateway.sessions import GatewayLogin
from bridge.web.limits import hit_for, limit

#: the request form's fields, each exactly once (a repeated or misspelt field is refused)
FORM_FIELDS = frozenset({"csrf_token", "target_kind", "target", "reason", "purpose_of_use"})
REVIEW_FORM_FIELDS = frozenset({"csrf_token", "verdict", "comment"})
#: the Flask session key of a request waiting for its fresh login
PENDING_KEY = "break_glass"

_FORM = """<section aria-labelledby="bg">
<h2 id="bg">Emergency access (break-glass)</h2>
<p id="bg-note">Only in an emergency: you get {{ permissions }} on ONE study or ONE patient for
{{ minutes }} minutes. You must log in again with your second factor. Your request is recorded,
alerts the privacy team at once, and is reviewed by another person afterwards.</p>
<form method="post" action="{{ prefix }}/break-glass" aria-describedby="bg-note">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="purpose_of_use" value="BTG">
<fieldset><legend>Access to</legend>
<label><input type="radio" name="target_kind" value="study" checked> one study (StudyInstanceUID)</label><br>
<label><input type="radio" name="target_kind" value="patient"> one patient (PatientID)</label>
</fieldset>
<p><label for="bg-target">StudyInstanceUID or PatientID</label><br>
<input id="bg-target" name="target" required maxlength="64" size="60" autocomplete="off"></p>
<p><label for="bg-reason">Reason (at least 10 characters)</label><br>
<textarea id="bg-reason" name="reason" required minlength="10" maxlength="1000" rows="3" cols="60"></textarea></p>
<button type="submit">Break the glass</button>
</form>
{% if active %}<h3>Your emergency access now</h3><ul>
{% for i in active %}<li>{{ i.target.kind }} {{ i.target.value }}
 until {{ i.expires_at.strftime('%H:%M') }} UTC</li>{% endfor %}
</ul>{% endif %}
</section>
"""

_REVIEW_LINK = """<section aria-labelledby="bg-rev"><h2 id="bg-rev">Break-glass reviews</h2>
<p><a href="{{ prefix }}/break-glass/reviews">{{ count }} emergency access request(s) waiting for review</a></p>
</section>
"""

_QUEUE = """<h1>Break-glass reviews</h1>
<p role="status">{{ open_count }} request(s) waiting for review.</p>
{% if items %}
<table>
<caption>Emergency access requests, newest first</caption>
<thead><tr><th scope="col">Asked</th><th scope="col">By</th><th scope="col">For</th><th scope="col">Reason</th>
<th scope="col">Until</th><th scope="col">Review</th></tr></thead>
<tbody>
{% for i in items %}<tr id="item-{{ i.id }}">
<td>{{ i.created_at.strftime('%Y-%m-%d %H:%M') }} UTC</td><td>{{ i.username or i.subject_id }}</td>
<td>{{ i.target.kind }} {{ i.target.value }}</td><td>{{ i.reason }}</td>
<td>{{ i.expires_at.strftime('%H:%M') }} UTC</td>
<td>{% if i.review_state != 'open' %}{{ i.review_state }} by {{ i.reviewer_username or i.reviewer_id }}:
 {{ i.review_comment }}
{% elif i.subject_id == me %}Your own request: another person must review it.
{% else %}<form method="post" action="{{ prefix }}/break-glass/reviews/{{ i.id }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<fieldset><legend>Verdict</legend>
<label><input type="radio" name="verdict" value="justified" required> justified</label>
<label><input type="radio" name="verdict" value="not-justified"> not justified</label></fieldset>
<label for="c-{{ i.id }}">Comment</label><br>
<textarea id="c-{{ i.id }}" name="comment" required maxlength="2000" rows="2" cols="30"></textarea><br>
<button type="submit">Close the review</button>
</form>{% endif %}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p>No break-glass request yet.</p>{% endif %}
<p><a href="{{ prefix }}/">Back to the PACS</a></p>
"""


def register(bp: Blueprint) -> None:
    """The routes, on the gateway's blueprint (before its catch-all proxy route matches them)."""
    bp.add_url_rule("/break-glass", "break_glass_form", form, methods=["GET", "HEAD"])
    bp.add_url_rule("/break-glass", "break_glass", start, methods=["POST"])
    bp.add_url_rule("/break-glass/reviews", "break_glass_reviews", reviews, methods=["GET", "HEAD"])
    bp.add_url_rule("/break-glass/reviews/<item_id>", "break_glass_close", close, methods=["POST"])
    bp.add_url_rule("/break-glass/<path:rest>", "break_glass_other", other,
                    methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])


def _permissions(login: GatewayLogin) -> frozenset[str]:
    """What the session's current PACS token allows everywhere (renewed at once after a role change):
    the review queue spans every department, so a scoped grant's permissions do not count."""
    grants = grants_mod.from_claims(gw_views._token_claims(login.tokens.pacs_token))
    return grants_mod.permissions_of(g for g in grants if g.unrestricted)


def landing_sections(login: GatewayLogin, csrf: str) -> str:
    """The landing page's break-glass parts: the form for a holder of an emergency role, the review
    link for a holder of ``audit-logs``."""
    gw = gw_views._gw()
    bg = api.service()
    out = ""
    if bg.may_request(login.subject_id) and bg.policy is not None and bg.policy.emergency is not None:
        now = time.time()
        active = [i for i in bg.items(None, 20, subject_id=login.subject_id) if i.expires_at.timestamp() > now]
        out += render_template_string(
            _FORM, prefix=gw.prefix, csrf=csrf, minutes=bg.policy.emergency.lifetime_minutes, active=active,
            permissions=", ".join(sorted(p.value for p in bg.policy.emergency.effective_permissions)))
    if REVIEW_PERMISSION in _permissions(login):
        out += render_template_string(_REVIEW_LINK, prefix=gw.prefix, count=bg.open_count())
    return out


def _session() -> GatewayLogin | Response:
    return gw_views._current(activity=True)


def _form_fields(allowed: frozenset[str]) -> dict[str, str]:
    """The POSTed form, each allowed field exactly once, nothing else (no query string either)."""
    if request.args:
        raise BreakGlassRefused("no query parameters on this form", 400)
    fields: dict[str, str] = {}
    for name in request.form:
        if name not in allowed:
            raise BreakGlassRefused(f"{name[:40]}: unknown field (use the form)", 400)
    for name in sorted(allowed):
        values = request.form.getlist(name)
        if len(values) != 1:
            raise BreakGlassRefused(f"{name}: give exactly one value (use the form)", 400)
        fields[name] = values[0]
    return fields


def _csrf_ok(login: GatewayLogin, given: str) -> bool:
    return hmac.compare_digest(gw_views.csrf_for(gw_views._gw(), login).encode(), given.encode())


def _page(title: str, text: str, status: int) -> Response:
    gw = gw_views._gw()
    return pages.message(title, text, status, gw.prefix + "/", "Back to the PACS")


@limit("login")
def form() -> Response:
    login = _session()
    if isinstance(login, Response):
        return login
    body = landing_sections(login, gw_views.csrf_for(gw_views._gw(), login))
    if not body:
        return _page("Emergency access", "None of your roles allows emergency access.", 403)
    return pages.page("Emergency access", body)


@limit("login")
def start() -> Response:
    """Check the request, then ask Keycloak for a new multi-factor login (nothing granted yet)."""
    gw = gw_views._gw()
    ok, why = rules.same_origin("POST", request.headers, gw.public_origin)
    if not ok:
        return gw_views._refuse(403, f"break-glass refused: {why}")
    login = _session()
    if isinstance(login, Response):
        return login
    bg = api.service()
    subject = Subject(login.subject_id, login.username)
    try:
        fields = _form_fields(FORM_FIELDS)
        if not _csrf_ok(login, fields["csrf_token"]):
            return gw_views._refuse(403, "break-glass: missing or wrong csrf_token (use the form)", login)
        target = Target.parse(fields["target_kind"], fields["target"])
        check_reason(fields["reason"])
        if fields["purpose_of_use"] != PURPOSE:
            raise BreakGlassRefused(f"purpose_of_use: must be {PURPOSE}", 400)
        if not bg.may_request(subject.id):
            bg._denied(subject, target, "none of the requester's roles allows emergency access", gw_views.CLIENT_ID,
                       client_address())
            raise BreakGlassRefused("None of your roles allows emergency access.")
    except BreakGlassRefused as exc:
        return _page("Emergency access refused", exc.message, exc.status)
    session[sess.PENDING] = {"gateway": True, "next": gw.prefix + "/", "stepped_up": True, PENDING_KEY: {
        "subject": subject.id, "target_kind": target.kind, "target": target.value, "reason": fields["reason"],
        "purpose_of_use": PURPOSE, "asked_at": time.time(), "old": login.id_hash}}
    session.permanent = True
    callback = str(gw.settings.bridge.public_url).rstrip("/") + url_for("login.callback")
    resp: Response = gw.oauth.authorize_redirect(callback, prompt="login", max_age=0,
                                                 acr_values=gw.service.mfa_rule.required_acr or "mfa")
    return pages.secure(resp)  # the old session cookie stays until the new login replaces it


def complete(pending: Mapping[str, Any], kc_claims: Mapping[str, Any], subject: Subject) -> tuple[str, str, int]:
    """In the login callback, once the new login is validated (before its PACS token is issued):
    give the grant, or say why not.  (title, text, status) of the page the user sees next."""
    gw = gw_views._gw()
    ask = pending.get(PENDING_KEY)
    bg = api.service()
    if not isinstance(ask, Mapping):
        return "Emergency access refused", "The request was lost; ask again.", 400
    try:
        target = Target.parse(ask.get("target_kind"), ask.get("target"))
        if ask.get("subject") != subject.id:
            bg._denied(subject, target, "the new login is another person's than the requester's",
                       gw_views.CLIENT_ID, client_address())
            raise BreakGlassRefused("The new login was not the requester's; ask again.")
        # the per-user limit counts grants, here where one is given: the pending request lives in the
        # browser's (signed) session cookie, so a kept copy could be replayed past a limit counted
        # only when the form was sent
        if not hit_for("break_glass", subject.id):
            bg._denied(subject, target, "too many break-glass requests (rate limit per user)", gw_views.CLIENT_ID,
                       client_address())
            raise BreakGlassRefused("Too many emergency access requests; wait, or call the PACS team.", 429)
        item = bg.request(subject, kc_claims, target, str(ask.get("reason", "")),
                          purpose_of_use=ask.get("purpose_of_use"), client_id=gw_views.CLIENT_ID,
                          network_address=client_address(), asked_at=float(ask.get("asked_at", 0)))
    except BreakGlassRefused as exc:
        return "Emergency access refused", exc.message, exc.status
    if isinstance(ask.get("old"), str):
        gw.store.end(ask["old"])  # the session the request came from is replaced by the new login's
    return ("Emergency access granted",
            f"You have {', '.join(item.permissions)} on {item.target.kind} {item.target.value} until "
            f"{item.expires_at.strftime('%H:%M')} UTC. This access is recorded and will be reviewed.", 200)


@limit("login")
def reviews() -> Response:
    gw = gw_views._gw()
    login = _session()
    if isinstance(login, Response):
        return login
    bg = api.service()
    if REVIEW_PERMISSION not in _permissions(login):
        bg._denied(Subject(login.subject_id, login.username), None,
                   f"break-glass review queue needs {REVIEW_PERMISSION}", gw_views.CLIENT_ID, client_address())
        return _page("Break-glass reviews", f"The review queue needs the {REVIEW_PERMISSION} permission.", 403)
    items = bg.items(OPEN) + bg.items(None, 50)
    seen: set[str] = set()
    unique = [i for i in items if not (i.id in seen or seen.add(i.id))]  # type: ignore[func-returns-value]
    body = render_template_string(_QUEUE, items=unique, open_count=bg.open_count(), me=login.subject_id,
                                  csrf=gw_views.csrf_for(gw, login), prefix=gw.prefix, verdicts=VERDICTS)
    return pages.page("Break-glass reviews", body)


@limit("login")
def close(item_id: str) -> Response:
    gw = gw_views._gw()
    ok, why = rules.same_origin("POST", request.headers, gw.public_origin)
    if not ok:
        return gw_views._refuse(403, f"break-glass review refused: {why}")
    login = _session()
    if isinstance(login, Response):
        return login
    try:
        fields = _form_fields(REVIEW_FORM_FIELDS)
        if not _csrf_ok(login, fields["csrf_token"]):
            return gw_views._refuse(403, "break-glass review: missing or wrong csrf_token (use the form)", login)
        api.service().close(item_id, Subject(login.subject_id, login.username), _permissions(login),
                            fields["verdict"], fields["comment"], network_address=client_address())
    except BreakGlassRefused as exc:
        return _page("Review not closed", exc.message, exc.status)
    return pages.secure(redirect(gw.prefix + "/break-glass/reviews", code=303))


def other(rest: str) -> Response:
    """Anything else under ``/break-glass/`` is the gateway's, never Orthanc's."""
    return _page("Not found", "There is no such break-glass page.", 404)
