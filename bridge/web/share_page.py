"""The share endpoint for external recipients (docs/sharing.md), under ``sharing.prefix`` (``/share``):

``<prefix>/<link>``       GET: the passcode form; POST (form field ``passcode``): open the share
``<prefix>/s/``           the shared study: its series and instances, de-identified UIDs only
``<prefix>/s/study.zip``  the de-identified study as a ZIP of DICOM files (shares with ``download``)
``<prefix>/s/logout``     POST: end the recipient's session

A blueprint of its own, so a site can expose it on a listener or host name of its own
(``sharing.public_url``) whose proxy forwards nothing else.  The recipient never receives a PACS
token and never reaches Orthanc: after the passcode the bridge sets a ``__Host-`` cookie (Secure,
HttpOnly, SameSite=Strict, Path=/) holding a share token whose audience is this endpoint, which the
PACS refuses.  A passcode is taken only from a form body: one in the query string is ignored (and
the page says so), and neither the passcode nor the token is logged or put in a URL.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    redirect,
    render_template_string,
    request,
    stream_with_context,
)

from bridge.config import Settings
from bridge.sharing.service import ShareError, ShareService
from bridge.sharing.store import ShareRecord
from bridge.web.client import client_address
from bridge.web.gateway.pages import message, page, secure
from bridge.web.limits import limit

EXTENSION = "pacs_bridge_share_page"
COOKIE = "__Host-pacs-share"

_FORM = """<h1>A study has been shared with you</h1>
{% if note %}<p role="alert">{{ note }}</p>{% endif %}
<form method="post" action="{{ action }}" autocomplete="off">
<p><label for="passcode">Passcode (given to you separately by the sender)</label><br>
<input id="passcode" name="passcode" type="password" required autofocus maxlength="64"></p>
<button type="submit">Open</button>
</form>
<p>The images are de-identified. After 5 wrong passcodes this address is locked out of the share.</p>
"""

_STUDY = """<h1>Shared study (de-identified)</h1>
<p>Shared by {{ rec.created_by_name or "the hospital" }} for {{ rec.recipient_name }}
({{ rec.recipient_org }}); available until {{ rec.expires_at.strftime("%Y-%m-%d %H:%M UTC") }}.</p>
{% if download %}<p><a href="{{ prefix }}/s/study.zip" download>Download the study (ZIP of DICOM files)</a></p>
{% else %}<p>This share allows viewing only.</p>{% endif %}
<table><caption>{{ instances|length }} instances</caption>
<thead><tr><th scope="col">Series</th><th scope="col">Instance</th><th scope="col">SOP Instance UID</th></tr></thead>
<tbody>{% for i in instances %}<tr><td>{{ i.series }}</td><td>{{ i.instance_number }}</td>
<td>{{ i.sop_instance_uid }}</td></tr>{% endfor %}</tbody></table>
<form method="post" action="{{ prefix }}/s/logout"><button type="submit">Close the share</button></form>
"""


def init_app(app: Flask, settings: Settings, service: ShareService | None = None) -> None:
    """Register; ``service`` None: the app's composition root builds it on first use."""
    app.extensions[EXTENSION] = service
    bp = Blueprint("share_page", __name__, url_prefix=settings.sharing.prefix)
    bp.add_url_rule("/s/", "study", _study, methods=["GET"])
    bp.add_url_rule("/s/study.zip", "archive", _archive, methods=["GET"])
    bp.add_url_rule("/s/logout", "logout", _logout, methods=["POST"])
    bp.add_url_rule("/<link>", "form", _form, methods=["GET"])
    bp.add_url_rule("/<link>", "open", _open, methods=["POST"])
    app.register_blueprint(bp)


def _service() -> ShareService:
    from bridge.web.shares import share_service

    return share_service(EXTENSION)


def _prefix() -> str:
    return str(current_app.config["BRIDGE_SETTINGS"].sharing.prefix)


def _passcode_in_url() -> bool:
    return any(k.lower() in ("passcode", "code", "token", "access_token") for k in request.args)


def _form(link: str) -> Response:
    note = "A passcode in the address is ignored: type it into the form." if _passcode_in_url() else ""
    return page("Shared study", render_template_string(_FORM, action=f"{_prefix()}/{link}", note=note))


@limit("login")
def _open(link: str) -> Response:
    values = request.form.getlist("passcode")
    if len(values) != 1:  # none (a passcode only in the query string), or repeated: no guess counted
        return page("Shared study", render_template_string(
            _FORM, action=f"{_prefix()}/{link}", note="Type the passcode into the form (exactly once)."), 400)
    try:
        _, token, seconds = _service().open(link, values[0], client_address() or "")
    except ShareError as exc:
        if exc.status == 401:
            return page("Shared study", render_template_string(
                _FORM, action=f"{_prefix()}/{link}", note="Wrong passcode."), 401)
        return message("Shared study", exc.description, exc.status)
    resp = secure(redirect(f"{_prefix()}/s/", code=303))
    resp.set_cookie(COOKIE, token, max_age=seconds, path="/", secure=True, httponly=True, samesite="Strict")
    return resp


def _session() -> tuple[ShareRecord, dict[str, Any]] | None:
    """The live share session of this request; a repeated cookie is no session (which one was meant?)."""
    tokens = request.cookies.getlist(COOKIE)
    if len(tokens) != 1:
        return None
    return _service().session(tokens[0])


def _ended() -> Response:
    resp = message("Shared study", "There is no open share in this browser, or the share has ended. Open the "
                   "link you were sent and enter the passcode again.", 401)
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return resp


def _study() -> Response:
    found = _session()
    if found is None:
        return _ended()
    rec, claims = found
    try:
        instances = _service().instances(rec, claims)
    except ShareError as exc:
        return message("Shared study", exc.description, exc.status)
    return page("Shared study", render_template_string(
        _STUDY, rec=rec, instances=instances, prefix=_prefix(), download="download" in rec.permissions))


def _archive() -> Response:
    found = _session()
    if found is None:
        return _ended()
    rec, claims = found
    if "download" not in rec.permissions:
        return message("Shared study", "This share allows viewing only.", 403)
    try:
        chunks = _service().export(rec, claims, client_address())
    except ShareError as exc:
        return message("Shared study", exc.description, exc.status)
    resp = Response(stream_with_context(chunks), mimetype="application/zip")
    resp.headers["Content-Disposition"] = 'attachment; filename="shared-study.zip"'
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _logout() -> Response:
    resp = secure(redirect(f"{_prefix()}/s/", code=303))
    resp.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return resp
