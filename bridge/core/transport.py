"""Is this client URL encrypted in transit?  One check for the bridge's configuration and the
Orthanc plugin's (stdlib only: it runs inside Orthanc).

Why not ``str.startswith("https://")`` alone: it accepts ``https://`` with no host and
``https:///path``, and it says nothing useful about ``HTTPS://`` (a valid spelling that some
clients would still treat as plain, so it is refused with a hint) or a value with a stray space
or control character (``" http://..."``), which another parser may read differently.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def url_problem(value: object, schemes: tuple[str, ...]) -> str | None:
    """Why ``value`` is not an absolute URL with one of ``schemes`` (e.g. ``("https",)``) and a
    host, or None when it is.  Schemes must be written in lower case."""
    allowed = " or ".join(f"{s}://" for s in schemes)
    if not isinstance(value, str) or not value:
        return f"must be a URL starting with {allowed}"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return f"contains a space or a control character; must be a URL starting with {allowed}"
    scheme, sep, _rest = value.partition("://")
    if not sep or scheme not in schemes:
        if sep and scheme.lower() in schemes:
            return f"write the scheme in lower case ({scheme.lower()}://)"
        return f"must start with {allowed}"
    try:
        host = urlsplit(value).hostname
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if not host:
        return "has no host name"
    return None
