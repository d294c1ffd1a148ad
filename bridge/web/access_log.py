"""The web server's access log without capabilities: a path segment that is a bearer secret (an external
share's link, ``<sharing.prefix>/<43 url-safe characters>``) is written as ``[redacted]``.

Why here and not in the app: the access line is written by the server (granian, through
bridge/deploy/web_server.py) after the response, from the request path; the share link is one of
the two factors of an external share (the passcode is the other), and a log reader must not get
half of it.  Any segment of 32 or more url-safe characters counts, so a future capability URL is
covered too; ordinary ids (Orthanc's 44-char
hyphenated ids contain '-' every 8 characters and are not matched) stay readable.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import quote

#: a path segment that looks like a random url-safe secret (secrets.token_urlsafe(24) and longer)
SECRET_SEGMENT = re.compile(r"(?<=/)[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")  # also before '.', ';' (a link in a sentence)
#: what a path keeps unescaped in the log: RFC 3986's path characters but the quote; a space, a
#: quote, a line break or any byte above 0x7e is written %XX, so no path can forge a field or a line
_PATH_SAFE = "/;:@!$&'()*+,=-._~"
#: the characters an X-Forwarded-For entry may show as they are (an address: IPv4, IPv6, port)
_ADDRESS = re.compile(r"[^0-9A-Za-z.:\[\]_-]")
ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


def redact(path: str) -> str:
    """``path`` (as WSGI decoded it: latin-1 text of the request's bytes) percent-encoded again and
    with every secret-looking segment replaced (Orthanc's ids are kept).  Encoding leaves url-safe
    characters and ``/`` as they are, so a link sent percent-encoded is redacted like a plain one."""
    path = quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
    return SECRET_SEGMENT.sub(lambda m: m.group(0) if ORTHANC_ID.match(m.group(0)) else "[redacted]", path)


class RedactingFilter(logging.Filter):
    """The filter on granian's access logger: the line's ``path`` redacted (:func:`redact`), the
    worker's ``pid`` (an atom granian has not got), and ``X-Forwarded-For`` as the nearest
    hop sent it.

    granian logs ``logger.info(fmt, atoms)`` and formats only when the line is written, so the atoms
    can be changed here.  granian's atom for ``X-Forwarded-For`` (the line's only header atom, so
    granian names it ``_h0``) holds every line of that header joined by commas; the last entry is
    the one the nearest proxy (HAProxy) added, the one to log."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, dict):
            atoms = dict(atoms)
            atoms["path"] = redact(str(atoms.get("path") or ""))
            atoms["pid"] = os.getpid()
            atoms[XFF_ATOM] = nearest_hop(atoms.get(XFF_ATOM))
            record.args = atoms
        return True


#: granian's name for the first ``%(header{...})s`` atom of a line (the line has one: X-Forwarded-For)
XFF_ATOM = "_h0"


def nearest_hop(value: object) -> str:
    """The last entry of a comma-joined ``X-Forwarded-For``, any character an address has not got
    written ``%XX`` (no field or line can be forged); ``-`` if none."""
    if not value or value == "-":
        return "-"
    last = str(value).rsplit(",", 1)[-1].strip()
    return _ADDRESS.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), last) or "-"
