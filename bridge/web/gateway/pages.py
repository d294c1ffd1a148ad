"""The pages the gateway renders itself: plain HTML, no script, labelled for screen readers.

Every page gets ``Cache-Control: no-store`` (the Back button after logout must not show a
cached page with patient context; it reloads and meets the login) and a Content-Security-Policy
that allows no script at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, current_app, render_template_string

#: no script, no plugin, no framing; forms only to the bridge itself -- and to Keycloak, because
#: the logout form's answer redirects there and Chromium applies ``form-action`` to redirects
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'{extra}; "
            "frame-ancestors 'none'; base-uri 'none'")
#: app config key: the Keycloak origin the logout form may end at (set by the gateway's init_app)
FORM_TARGETS = "PACS_BRIDGE_GATEWAY_FORM_TARGETS"

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>body{font-family:sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem;line-height:1.5}
table{border-collapse:collapse}th,td{border:1px solid #888;padding:.3rem .6rem;text-align:left;vertical-align:top}
a,button{font-size:1rem}</style></head>
<body>
<header><p><strong>PACS</strong> &mdash; {{ title }}</p></header>
<main id="main">
{{ body|safe }}
</main></body></html>
"""

_LANDING = """<h1>Welcome, {{ who }}</h1>
<section aria-labelledby="you">
<h2 id="you">Who you are</h2>
<dl>
<dt>User name</dt><dd>{{ username }}</dd>
{% if name %}<dt>Name</dt><dd>{{ name }}</dd>{% endif %}
<dt>Sign-in</dt><dd>{{ how }}</dd>
</dl>
</section>
<section aria-labelledby="roles">
<h2 id="roles">Your roles and what each allows</h2>
{% if grants %}
<table aria-describedby="roles-note">
<caption id="roles-note">Each row is one role; a role's rights apply only within its limits.</caption>
<thead><tr><th scope="col">Role</th><th scope="col">Allows</th><th scope="col">Limited to</th></tr></thead>
<tbody>
{% for g in grants %}<tr><th scope="row">{{ g.role }}</th><td>{{ g.permissions }}</td><td>{{ g.scope }}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p>You hold no PACS role.</p>{% endif %}
</section>
{{ sections|safe }}
<nav aria-label="PACS applications">
<h2>Open</h2>
<ul>
<li><a href="{{ prefix }}/app/explorer.html">Orthanc Explorer: browse, search and upload studies</a></li>
</ul>
</nav>
<section aria-labelledby="leave">
<h2 id="leave">Leave</h2>
<p>You are logged out automatically after {{ idle_minutes }} minutes without activity.</p>
<form method="post" action="{{ prefix }}/logout">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit">Log out</button>
</form>
</section>
"""

_CONFIRM = """<h1>Log out</h1>
<form method="post" action="{{ prefix }}/logout">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<p>Log out of the PACS and end your single sign-on session?</p>
<button type="submit">Log out</button>
</form>
<p><a href="{{ prefix }}/">Back to the PACS</a></p>
"""

_MESSAGE = """<h1>{{ heading }}</h1>
<p role="status">{{ text }}</p>
{% if link %}<p><a href="{{ link }}">{{ link_text }}</a></p>{% endif %}
"""


def page(title: str, body: str, status: int = 200) -> Response:
    resp = Response(render_template_string(_LAYOUT, title=title, body=body), status=status, mimetype="text/html")
    return secure(resp)


def secure(resp: Response) -> Response:
    extra = current_app.config.get(FORM_TARGETS, "") if current_app else ""
    resp.headers["Content-Security-Policy"] = PAGE_CSP.format(extra=f" {extra}" if extra else "")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: under no-referrer Chromium sends ``Origin: null`` with the
    # page's own form POSTs, which the same-origin check must refuse
    resp.headers["Referrer-Policy"] = "same-origin"
    return resp


def _words(values: Any) -> str:
    if not values:
        return ""
    return ", ".join(str(v) for v in values)


def grant_rows(claims: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per grant of a token (format 2: ``grants``), else per role of the older claims."""
    rows: list[dict[str, str]] = []
    grants = claims.get("grants")
    if isinstance(grants, list):
        for g in grants:
            if not isinstance(g, Mapping):
                continue
            scope = g.get("scope") if isinstance(g.get("scope"), Mapping) else {}
            limits = "; ".join(f"{k}: {_words(v)}" for k, v in sorted(scope.items()) if v) or "no limit"
            role = g.get("role") or g.get("kind") or "grant"
            rows.append({"role": str(role), "permissions": _words(g.get("permissions")) or "nothing",
                         "scope": limits})
        return rows
    scope = []
    for key in ("departments", "institutions"):
        if claims.get(key):
            scope.append(f"{key}: {_words(claims[key])}")
    for role in claims.get("roles") or []:
        rows.append({"role": str(role), "permissions": _words(claims.get("permissions")) or "nothing",
                     "scope": "; ".join(scope) or "no limit"})
    return rows


def landing(claims: Mapping[str, Any], prefix: str, csrf: str, idle_minutes: int, sections: str = "") -> Response:
    """The landing page; ``sections``: HTML rendered (escaped) by another page module, e.g. the
    break-glass form (bridge/web/gateway/breakglass.py)."""
    who = claims.get("name") or claims.get("preferred_username") or claims.get("sub")
    amr = claims.get("amr") or []
    how = "with a second factor" + (f" ({_words(amr)})" if amr else "")
    body = render_template_string(
        _LANDING, who=who, username=claims.get("preferred_username") or claims.get("sub"),
        name=claims.get("name"), how=how, grants=grant_rows(claims), prefix=prefix, csrf=csrf,
        idle_minutes=idle_minutes, sections=sections)
    return page("Your PACS access", body)


def confirm_logout(prefix: str, csrf: str) -> Response:
    return page("Log out", render_template_string(_CONFIRM, prefix=prefix, csrf=csrf))


def message(title: str, text: str, status: int = 200, link: str | None = None, link_text: str = "") -> Response:
    return page(title, render_template_string(_MESSAGE, heading=title, text=text, link=link, link_text=link_text),
                status)
