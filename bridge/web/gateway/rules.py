"""The gateway's rules as pure functions (unit-tested without a server): when a session ends,
what counts as user activity, which requests are same-origin, which paths may reach Orthanc.

Activity (docs/gateway.md, "Idle timeout"): a request is *user-initiated* unless it is a
background poll, i.e. a GET/HEAD that is not a top-level navigation (``Sec-Fetch-Mode`` other
than ``navigate``) to a path on the configured ``background_paths`` list.  Navigations, every
state-changing request and every other XHR restart the idle clock; a viewer polling
``/changes`` all day does not keep an unattended workstation logged in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: the idle clock is written at most this often per session (one UPDATE per window, not per request)
ACTIVITY_WRITE_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Limits:
    idle_seconds: float
    absolute_seconds: float


def ended(created_at: float, last_activity: float, expires_at: float, now: float, limits: Limits) -> str | None:
    """Why a session is over at ``now``, or None while it lives."""
    if now >= expires_at or now - created_at >= limits.absolute_seconds:
        return "absolute lifetime reached"
    if now - last_activity >= limits.idle_seconds:
        return "idle timeout"
    return None


def activity_write_seconds(idle_seconds: float) -> float:
    """How long after the last *written* activity a user request is written again: at most
    :data:`ACTIVITY_WRITE_MAX_SECONDS` and at most a tenth of the idle timeout.

    Why: a database write (a commit, an fsync on PostgreSQL) on every request was the largest part
    of the gateway's p99.  Activity inside the window is not written, so the idle timeout counts from
    the last write: a session ends at most this long *early* after the user's real last request,
    never late (the timeout is not weakened; a continuously active user is never logged out)."""
    return min(ACTIVITY_WRITE_MAX_SECONDS, idle_seconds / 10)


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def is_activity(method: str, path: str, headers: Mapping[str, str], background_paths: Iterable[str]) -> bool:
    """Whether this request restarts the idle clock (``path`` is below the prefix, e.g. ``/changes``)."""
    if method.upper() not in ("GET", "HEAD"):
        return True
    if headers.get("Sec-Fetch-Mode", "").lower() == "navigate":
        return True
    return not _under(path, background_paths)


def is_navigation(method: str, headers: Mapping[str, str]) -> bool:
    """A top-level page load (may be sent to Keycloak to log in), as opposed to an XHR (gets 401)."""
    if method.upper() != "GET":
        return False
    mode = headers.get("Sec-Fetch-Mode", "").lower()
    if mode:
        return mode == "navigate"
    return "text/html" in headers.get("Accept", "")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(method: str, headers: Mapping[str, str], public_origin: str) -> tuple[bool, str]:
    """Whether a request may change state: its ``Origin`` is the bridge's own, or (no ``Origin``)
    ``Sec-Fetch-Site`` says same-origin.  Neither header, ``Origin: null`` or another origin: no.
    Safe methods always pass (they must not change state; Orthanc's GET routes do not)."""
    if method.upper() in SAFE_METHODS:
        return True, "safe method"
    origins = headers.get("Origin")
    if origins is not None:
        if origins.strip().lower() == public_origin.lower():
            return True, "Origin matches"
        return False, f"Origin {origins[:100]!r} is not the bridge's"
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        if site.strip().lower() == "same-origin":
            return True, "Sec-Fetch-Site: same-origin"
        return False, f"Sec-Fetch-Site: {site[:40]}"
    return False, "no Origin and no Sec-Fetch-Site (a browser sends one on a state-changing request)"


def upstream_path(rest: str) -> str | None:
    """The Orthanc path for ``<prefix>/<rest>`` (``rest`` as WSGI decoded it), or None to refuse.

    Refused: a ``.`` or ``..`` segment (after decoding, so ``%2e%2e`` too), a backslash, control
    characters, an empty segment: nothing may climb out of Orthanc's tree or mean one thing to
    the gateway and another to Orthanc.  Also ``?``, ``#`` and ``%`` (sent as ``%3F``, ``%23``,
    ``%25``): in the URL the gateway sends they would start a query or a fragment or be read as an
    escape, naming another resource than the one judged here.

    The server gives the decoded path only (granian has no raw request path), so ``%2F`` is a
    ``/`` here as it is for Orthanc, which decodes the path before splitting it: the segments
    judged here are the ones Orthanc sees."""
    if any(ord(c) < 0x20 or c in "\\\x7f?#%" for c in rest):
        return None
    segments = rest.split("/")
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            return None
        if seg == "" and i != len(segments) - 1:  # '//' inside; a trailing '/' is fine
            return None
    return "/" + rest


def plain_raw_path(raw: str) -> bool:
    """Whether a path as a browser will send it (a ``next`` target after login, still
    percent-encoded) is free of encoded ``/``, ``\\``, ``.``, ``?``, ``#`` and NUL: the redirect must lead
    to the path that was judged, not to one that decodes into another."""
    low = raw.lower()
    return not any(code in low for code in ("%2f", "%5c", "%2e", "%00", "%3f", "%23"))


def overrides_method(args: Iterable[str]) -> bool:
    """A ``_method`` query parameter (any case, any encoding werkzeug decodes): Orthanc turns
    ``GET ...?_method=DELETE`` into a DELETE before its filter judges it, so through the gateway it
    would be a state change sent as a GET -- past the same-origin rule, on a cross-site link."""
    return any("_method" in k.lower() for k in args)
