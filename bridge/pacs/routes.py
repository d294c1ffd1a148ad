"""The one route -> permission table of the PACS (Orthanc REST API, DICOMweb, WADO-URI, web UIs).

Imported by the verifier (to decide a request) and by the token service (scope list, docs);
never copied.  Stdlib only: it runs under Debian's ``/usr/bin/python3`` inside Orthanc.

Default deny: a (method, path) that matches no rule maps to ``None`` and is refused.  Rules are
tried in order inside the bucket of the path's first segment, so the specific rules (``archive``,
``file``, ``modify`` ...) come before the general "any GET below a resource is viewing" rule.

Pattern syntax, one token per path segment: a literal, ``a|b`` (one of), ``*`` (any one
segment), and a final ``**`` (zero or more further segments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.policy.permissions import Permission

P = Permission
LEVEL = "patients|studies|series|instances"
ARCHIVE_LEVEL = "patients|studies|series"
READ = frozenset({"GET", "HEAD"})
ANY = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: str
    permission: Permission
    what: str

    def regex(self) -> re.Pattern[str]:
        parts = []
        for seg in self.pattern.strip("/").split("/"):
            if seg == "**":
                parts.append("(?:/[^/]+)*")
            elif seg == "*":
                parts.append("/[^/]+")
            elif seg:
                parts.append("/(?:" + "|".join(_alternative(s) for s in seg.split("|")) + ")")
        return re.compile("".join(parts) + "/?" if parts else "/")


def _alternative(literal: str) -> str:
    """One alternative of a segment; a trailing ``*`` makes it a prefix (``log-level-*``)."""
    if literal.endswith("*"):
        return re.escape(literal[:-1]) + "[^/]*"
    return re.escape(literal)


def _r(methods: frozenset[str] | str, pattern: str, permission: Permission, what: str) -> Route:
    ms = frozenset({methods}) if isinstance(methods, str) else methods
    return Route(ms, pattern, permission, what)


ROUTES: tuple[Route, ...] = (
    # --- download: whole files and archives leave the PACS
    _r(
        ANY - {"DELETE", "PUT"},
        f"/{ARCHIVE_LEVEL}/*/archive|media",
        P.DOWNLOAD,
        "ZIP archive / DICOMDIR media",
    ),
    _r(READ, "/instances/*/file", P.DOWNLOAD, "raw DICOM file"),
    _r(READ, f"/{LEVEL}/*/attachments/**", P.DOWNLOAD, "raw attachments"),
    _r(
        ANY - {"DELETE", "PUT"},
        "/tools/create-archive|create-media|create-media-extended",
        P.DOWNLOAD,
        "archive of several resources",
    ),
    # --- modify / anonymize
    _r("POST", f"/{LEVEL}/*/modify", P.MODIFY, "modify tags"),
    _r(
        frozenset({"PUT", "DELETE"}),
        f"/{LEVEL}/*/metadata|attachments/**",
        P.MODIFY,
        "metadata / attachments",
    ),
    _r("PUT", f"/{LEVEL}/*/protected", P.MODIFY, "protect from recycling"),
    _r("POST", f"/{LEVEL}/*/reconstruct", P.MODIFY, "reconstruct the main DICOM tags"),
    _r("POST", "/tools/bulk-modify", P.MODIFY, "bulk modify"),
    _r("POST", f"/{LEVEL}/*/anonymize", P.ANONYMIZE, "anonymize"),
    _r("POST", "/tools/bulk-anonymize", P.ANONYMIZE, "bulk anonymize"),
    # --- admin actions that live below a resource
    _r("POST", "/instances/*/export", P.ADMIN, "write a file on the PACS server's disk"),
    # --- delete
    _r("DELETE", f"/{LEVEL}/*", P.DELETE, "delete a resource"),
    _r("POST", "/tools/bulk-delete", P.DELETE, "bulk delete"),
    # --- upload
    _r("POST", "/instances", P.UPLOAD, "store DICOM instances"),
    _r("POST", "/tools/create-dicom", P.UPLOAD, "create a DICOM instance"),
    _r("POST", "/dicom-web/studies/**", P.UPLOAD, "STOW-RS"),
    # --- view: the resources, their tags, previews, frames; queries
    _r(READ, f"/{LEVEL}", P.VIEW, "list resources"),
    _r(READ, f"/{LEVEL}/*/**", P.VIEW, "resource, children, tags, previews, frames, metadata"),
    _r("POST", "/tools/find|lookup|count-resources", P.VIEW, "query the PACS"),
    _r(
        READ,
        "/tools/now|now-local|generate-uid|dicom-conformance",
        P.VIEW,
        "harmless helpers used by viewers",
    ),
    _r(READ, "/dicom-web/studies|series|instances/**", P.VIEW, "QIDO-RS / WADO-RS"),
    _r(READ, "/wado", P.VIEW, "WADO-URI"),
    _r(READ, "/app|ui|stone-webviewer|ohif|osimis-viewer|volview|web-viewer/**", P.VIEW, "web viewers"),
    _r(READ, "/favicon.ico", P.VIEW, "icon"),
    # --- send: to modalities, peers, remote DICOMweb servers
    _r(ANY, "/modalities/**", P.SEND, "DICOM modalities: echo, C-FIND, C-MOVE, C-STORE"),
    _r(ANY, "/peers/**", P.SEND, "Orthanc peers"),
    _r(ANY, "/queries/**", P.SEND, "retrieve query results from modalities"),
    _r(ANY, "/dicom-web/servers/**", P.SEND, "remote DICOMweb servers"),
    _r(ANY, "/transfers/**", P.SEND, "accelerated transfers"),
    # --- settings
    _r(READ, "/system", P.SETTINGS, "server identity and versions"),
    _r(READ, "/statistics", P.SETTINGS, "server statistics"),
    _r(READ, "/changes|exports", P.SETTINGS, "change and export feeds"),
    _r(
        ANY - {"DELETE"},
        "/tools/log-level|log-level-*|metrics|metrics-prometheus|default-encoding"
        "|accepted-transfer-syntaxes|unknown-sop-class-accepted",
        P.SETTINGS,
        "server settings",
    ),
    # --- admin
    _r(ANY, "/plugins/**", P.ADMIN, "plugins"),
    _r(ANY, "/jobs/**", P.ADMIN, "jobs"),
    _r("DELETE", "/changes|exports", P.ADMIN, "clear feeds"),
    _r(
        ANY,
        "/tools/reset|shutdown|execute-script|reconstruct|invalidate-tags",
        P.ADMIN,
        "server administration",
    ),
)


def _first_segment(pattern: str) -> list[str]:
    head = pattern.strip("/").split("/")[0]
    return head.split("|") if head not in ("*", "**") else ["*"]


def _index() -> dict[str, tuple[tuple[frozenset[str], re.Pattern[str], Route], ...]]:
    buckets: dict[str, list[tuple[frozenset[str], re.Pattern[str], Route]]] = {}
    for route in ROUTES:
        rx = route.regex()
        for head in _first_segment(route.pattern):
            buckets.setdefault(head, []).append((route.methods, rx, route))
    return {k: tuple(v) for k, v in buckets.items()}


_BUCKETS = _index()


def _normalized(path: str) -> bool:
    """Paths a filter must not try to interpret: dot segments, empty segments, encoded separators."""
    if not path.startswith("/") or "//" in path or "\\" in path or "\x00" in path:
        return False
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%2e" in lowered:
        return False
    return not any(seg in (".", "..") for seg in path.split("/"))


#: (method, path) -> rule: the request filter asks about the same URIs again and again (a viewer's
#: frames, one study's metadata), and a dictionary hit is several times cheaper than the
#: normalisation checks and regular expressions.  Bounded (cleared when full) so that a client
#: sending endless distinct paths costs memory only up to the bound.
_MEMO: dict[tuple[str, str], Route | None] = {}
MEMO_SIZE = 4096


def route_for(method: str, path: str) -> Route | None:
    """The rule that covers ``method path`` (query string ignored), or None: deny."""
    key = (method, path.split("?", 1)[0])
    try:
        return _MEMO[key]
    except KeyError:
        pass
    route = _match(*key)
    if len(_MEMO) >= MEMO_SIZE:
        _MEMO.clear()
    _MEMO[key] = route
    return route


def _match(method: str, path: str) -> Route | None:
    if not _normalized(path):
        return None
    method = method.upper()
    head = path[1:].split("/", 1)[0]
    candidates = _BUCKETS.get(head, ())
    for methods, rx, route in candidates:
        if method in methods and rx.fullmatch(path):
            return route
    return None


def permission_for(method: str, path: str) -> Permission | None:
    route = route_for(method, path)
    return None if route is None else route.permission


def table() -> list[dict[str, str]]:
    """The table as rows (for docs and the token service's metadata)."""
    return [
        {
            "methods": " ".join(sorted(r.methods)),
            "path": r.pattern,
            "permission": r.permission.value,
            "what": r.what,
        }
        for r in ROUTES
    ]
