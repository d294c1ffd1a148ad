"""gunicorn's access log without capabilities: a path segment that is a bearer secret (an external
share's link, ``<sharing.prefix>/<43 url-safe characters>``) is written as ``[redacted]``.

Why here and not in the app: the access line is written by gunicorn after the response, from the
raw request path; the share link is one of the two factors of an external share (the passcode is
the other), and a log reader must not get half of it.  Any segment of 32 or more url-safe
characters counts, so a future capability URL is covered too; ordinary ids (Orthanc's 44-char
hyphenated ids contain '-' every 8 characters and are not matched) stay readable.
"""

from __future__ import annotations

import os
import re
from typing import Any

from gunicorn.glogging import Logger

#: a path segment that looks like a random url-safe secret (secrets.token_urlsafe(24) and longer)
SECRET_SEGMENT = re.compile(r"(?<=/)[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")  # also before '.', ';' (a link in a sentence)
#: what a log line may not carry raw: a path with a line break would forge a line of its own
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


def redact(path: str) -> str:
    """``path`` with every secret-looking segment replaced (Orthanc's ids are kept) and control
    characters escaped (``\\xNN``)."""
    path = _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", path)
    return SECRET_SEGMENT.sub(lambda m: m.group(0) if ORTHANC_ID.match(m.group(0)) else "[redacted]", path)


class RedactingLogger(Logger):
    """gunicorn's logger whose ``%(U)s`` (the path) has secret segments redacted, and which builds
    only the atoms the bridge's access line uses.

    gunicorn's own ``atoms()`` makes, for every request, one entry per request header, response
    header and WSGI environ key (about 60), a formatted date and a parse of ``Authorization`` for
    ``%(u)s``; the bridge's line (``bridge.deploy.gunicorn.ACCESS_LOG_FORMAT``) reads seven.  On the
    gateway's image route that was a measurable share of the bridge's own time per request (issue 11).
    An atom not built here prints as ``-`` (gunicorn's safe atoms); a unit test holds that every
    atom of the line is built."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "p": f"<{os.getpid()}>",
            "m": environ.get("REQUEST_METHOD"),
            "U": redact(str(environ.get("PATH_INFO") or "")),
            "s": status,
            "M": request_time.seconds * 1000 + request_time.microseconds // 1000,
            "{x-forwarded-for}i": _last_header(req, "x-forwarded-for"),
        }


def _last_header(req: Any, name: str) -> str:
    """The last ``name`` header as gunicorn's own atoms give it: a proxy such as HAProxy adds its own
    line after the client's (untrusted) one, and the line of the nearest hop is the one logged."""
    value = "-"
    for key, v in getattr(req, "headers", None) or ():
        if key.lower() == name:
            value = v
    return value
