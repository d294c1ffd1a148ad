"""The one route -> permission table of the PACS (Orthanc REST API, DICOMweb, WADO-URI, web UIs).

Imported by the verifier (to decide a request) and by the token service (scope list, docs);
never copied.  Stdlib only: it runs under Debian's ``/usr/bin/python3`` inside Orthanc.

Default deny: a (method, path) that matches no rule maps to ``None`` and is refused.  Rules are
tried in order inside the bucket of the path's first segment, so the specific rules (``archive``,
``file``, ``modify`` ...) come before the general "any GET below a resource is viewing" rule.
The rules list what Orthanc 1.10.1, the DICOMweb plugin 1.7 and the web viewer 2.8 serve; a route
of another plugin stays denied until someone has read what it answers and added it here.

Pattern syntax, one token per path segment: a literal, ``a|b`` (one of), ``*`` (any one
segment), and a final ``**`` (zero or more further segments).

A rule needs its ``permission`` (or one of ``instead``) *and* every permission of ``also``: the
instance-level ``modify`` answers with the modified file, so it needs ``modify`` + ``download``.
A rule with a ``when`` test applies only when the test holds on the query parameters (WADO-URI's
``contentType`` decides between a rendered image and the DICOM file); such a rule comes before
the unconditional rule of the same path, and its test must fail closed (hold when in doubt).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from bridge.core.permissions import Permission

P = Permission
LEVEL = "patients|studies|series|instances"
ARCHIVE_LEVEL = "patients|studies|series"
READ = frozenset({"GET", "HEAD"})
ANY = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})

#: query parameters, decoded, every value of a repeated key kept in order
Query = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class QueryTest:
    """A condition on the query string; ``doc`` is what the table prints."""

    doc: str
    test: Callable[[Query], bool]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: str
    permission: Permission
    what: str
    also: tuple[Permission, ...] = ()  # needed as well, every one of them
    instead: tuple[Permission, ...] = ()  # any one of these may stand in for ``permission``
    when: QueryTest | None = None

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

    @cached_property
    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(``also``, ``permission`` + ``instead``) as plain strings, computed once: enum ``.value``
        lookups cost more than the whole membership test on the request path."""
        return tuple(p.value for p in self.also), tuple(p.value for p in (self.permission, *self.instead))

    def granted(self, held: Collection[str]) -> str | None:
        """The permission name ``held`` satisfies this rule with (``permission`` first), or None."""
        also, first = self._names
        for name in also:
            if name not in held:
                return None
        for name in first:
            if name in held:
                return name
        return None

    def missing(self, held: Collection[str]) -> list[str]:
        """What ``held`` lacks, for the denial reason (``a|b`` when any one of them would do)."""
        also, first = self._names
        out = [name for name in also if name not in held]
        if not any(name in held for name in first):
            out.insert(0, "|".join(first))
        return out

    @cached_property
    def requirement(self) -> str:
        """``modify + download``, ``send | q-r-remote-modalities | admin``: for reasons and docs."""
        first = " | ".join(p.value for p in (self.permission, *self.instead))
        return " + ".join([first, *(p.value for p in self.also)])

    @cached_property
    def allow_reason(self) -> str:
        """The reason of an allowed decision (built once: it is on the request path)."""
        return f"{self.requirement}: {self.what}"


def _alternative(literal: str) -> str:
    """One alternative of a segment; a trailing ``*`` makes it a prefix (``log-level-*``)."""
    if literal.endswith("*"):
        return re.escape(literal[:-1]) + "[^/]*"
    return re.escape(literal)


def _r(
    methods: frozenset[str] | str,
    pattern: str,
    permission: Permission,
    what: str,
    *,
    also: Iterable[Permission] = (),
    instead: Iterable[Permission] = (),
    when: QueryTest | None = None,
) -> Route:
    ms = frozenset({methods}) if isinstance(methods, str) else methods
    return Route(ms, pattern, permission, what, tuple(sorted(set(also))), tuple(sorted(set(instead))), when)


# ------------------------------------------------------------------ query tests


def _values(query: Query, name: str) -> list[str]:
    """Every value of ``name``, whatever the case of the key: Orthanc and its plugins compare keys
    exactly, but a rule must not be dodged by a spelling that another reader might accept."""
    name = name.lower()
    return [v for k, vs in query.items() if k.lower() == name for v in vs]


#: WADO-URI ``contentType`` values the DICOMweb plugin answers with a rendered image; any other
#: value is the DICOM file (``application/dicom``) or an error
WADO_IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png"})

WADO_FILE = QueryTest(
    "contentType is not image/jpeg|jpg|png (application/dicom returns the file)",
    lambda q: any(v not in WADO_IMAGE_TYPES for v in _values(q, "contentType")),
)
EXPANDED = QueryTest(
    "expand (the list then carries each peer's host, port, URL, user)",
    lambda q: bool(_values(q, "expand")),
)

# ------------------------------------------------------------------ the table

#: what Orthanc 1.10.1 serves below ``/{level}/{id}`` that a viewer needs (JSON, rendered or decoded
#: images, raw pixel data, the encapsulated PDF); ``file``, ``archive``, ``media`` and
#: ``attachments`` are not here: they answer with whole files
VIEW_BELOW = (
    "statistics|metadata|module|module-patient|shared-tags|instances-tags|instances|series|studies"
    "|patient|study|protected|ordered-slices|numpy|header|frames|image-int16|image-uint16|image-uint8"
    "|matlab|pdf|preview|rendered|simplified-tags|tags|content"
)
FRAME_VIEWS = "image-int16|image-uint16|image-uint8|matlab|numpy|preview|raw|raw.gz|rendered"

PEER_USERS = (P.QUERY_RETRIEVE, P.ADMIN)  # beside SEND: who may list peer names and echo them

ROUTES: tuple[Route, ...] = (
    # --- download: whole files and archives leave the PACS
    _r(
        ANY - {"DELETE", "PUT"},
        f"/{ARCHIVE_LEVEL}/*/archive|media",
        P.DOWNLOAD,
        "ZIP archive / DICOMDIR media",
    ),
    _r(READ, "/instances/*/file", P.DOWNLOAD, "raw DICOM file"),
    _r(READ, f"/{LEVEL}/*/attachments/**", P.DOWNLOAD, "raw attachments (the stored DICOM file among them)"),
    _r(
        ANY - {"DELETE", "PUT"},
        "/tools/create-archive|create-media|create-media-extended",
        P.DOWNLOAD,
        "archive of several resources",
    ),
    _r(READ, "/dicom-web/studies/*", P.DOWNLOAD, "WADO-RS retrieve study (DICOM Part 10 files)"),
    _r(READ, "/dicom-web/studies/*/series/*", P.DOWNLOAD, "WADO-RS retrieve series (DICOM Part 10 files)"),
    _r(
        READ,
        "/dicom-web/studies/*/series/*/instances/*",
        P.DOWNLOAD,
        "WADO-RS retrieve instance (DICOM Part 10 file)",
    ),
    _r(READ, "/wado", P.DOWNLOAD, "WADO-URI DICOM file", when=WADO_FILE),
    # --- modify / anonymize
    _r(
        "POST",
        "/instances/*/modify",
        P.MODIFY,
        "modify one instance (answers with the modified file)",
        also=[P.DOWNLOAD],
    ),
    _r("POST", f"/{ARCHIVE_LEVEL}/*/modify", P.MODIFY, "modify tags (stored as new resources)"),
    _r(
        frozenset({"PUT", "DELETE"}),
        f"/{LEVEL}/*/metadata|attachments/**",
        P.MODIFY,
        "metadata / attachments",
    ),
    _r("PUT", f"/{LEVEL}/*/protected", P.MODIFY, "protect from recycling"),
    _r("POST", f"/{LEVEL}/*/reconstruct", P.MODIFY, "reconstruct the main DICOM tags"),
    _r("POST", "/studies/*/merge|split", P.MODIFY, "merge / split studies"),
    _r("POST", "/tools/bulk-modify", P.MODIFY, "bulk modify"),
    _r(
        "POST",
        "/instances/*/anonymize",
        P.ANONYMIZE,
        "anonymize one instance (answers with the anonymized file)",
        also=[P.DOWNLOAD],
    ),
    _r("POST", f"/{ARCHIVE_LEVEL}/*/anonymize", P.ANONYMIZE, "anonymize (stored as new resources)"),
    _r("POST", "/tools/bulk-anonymize", P.ANONYMIZE, "bulk anonymize"),
    # --- admin actions that live below a resource
    _r("POST", "/instances/*/export", P.ADMIN, "write a file on the PACS server's disk"),
    _r(
        "POST",
        f"/{LEVEL}/*/attachments/*/compress|uncompress|verify-md5",
        P.ADMIN,
        "storage maintenance",
    ),
    # --- delete
    _r("DELETE", f"/{LEVEL}/*", P.DELETE, "delete a resource"),
    _r("POST", "/tools/bulk-delete", P.DELETE, "bulk delete"),
    # --- upload
    _r("POST", "/instances", P.UPLOAD, "store DICOM instances"),
    _r("POST", "/tools/create-dicom", P.UPLOAD, "create a DICOM instance"),
    _r("POST", "/dicom-web/studies", P.UPLOAD, "STOW-RS"),
    _r("POST", "/dicom-web/studies/*", P.UPLOAD, "STOW-RS into one study"),
    # --- view: what a viewer needs to display (resources, tags, metadata, rendered images,
    #     frames / pixel data, encapsulated PDF), and queries
    _r(READ, f"/{LEVEL}", P.VIEW, "list resources"),
    _r(READ, f"/{LEVEL}/*", P.VIEW, "one resource"),
    _r(READ, f"/{LEVEL}/*/{VIEW_BELOW}", P.VIEW, "children, parents, tags, metadata, images, pixel data"),
    _r(READ, f"/{LEVEL}/*/metadata/*", P.VIEW, "one metadata item"),
    _r(READ, "/instances/*/content/**", P.VIEW, "raw value of one tag (pixel data, an encapsulated PDF)"),
    _r(READ, "/instances/*/frames/*", P.VIEW, "one frame"),
    _r(READ, f"/instances/*/frames/*/{FRAME_VIEWS}", P.VIEW, "one frame, decoded or rendered"),
    _r("POST", "/tools/find|lookup|count-resources", P.VIEW, "query the PACS"),
    _r(
        READ,
        "/tools/now|now-local|generate-uid|dicom-conformance",
        P.VIEW,
        "harmless helpers used by viewers",
    ),
    _r(READ, "/dicom-web/studies|series|instances", P.VIEW, "QIDO-RS"),
    _r(READ, "/dicom-web/studies/*/series|instances", P.VIEW, "QIDO-RS"),
    _r(READ, "/dicom-web/studies/*/series/*/instances", P.VIEW, "QIDO-RS"),
    _r(
        READ,
        "/dicom-web/studies/*/metadata|rendered",
        P.VIEW,
        "WADO-RS metadata (no bulk data) / rendered image",
    ),
    _r(READ, "/dicom-web/studies/*/series/*/metadata|rendered", P.VIEW, "WADO-RS metadata / rendered"),
    _r(
        READ,
        "/dicom-web/studies/*/series/*/instances/*/metadata|rendered|frames",
        P.VIEW,
        "WADO-RS metadata / rendered / all frames",
    ),
    _r(
        READ,
        "/dicom-web/studies/*/series/*/instances/*/frames/*",
        P.VIEW,
        "WADO-RS frames (pixel data)",
    ),
    _r(READ, "/dicom-web/studies/*/series/*/instances/*/frames/*/rendered", P.VIEW, "WADO-RS rendered frame"),
    _r(READ, "/dicom-web/studies/*/series/*/instances/*/bulk/**", P.VIEW, "WADO-RS bulk data of one tag"),
    _r(READ, "/dicom-web/info", P.VIEW, "DICOMweb plugin information"),
    _r(READ, "/dicom-web/app/**", P.VIEW, "DICOMweb plugin's client pages (static)"),
    _r(READ, "/wado", P.VIEW, "WADO-URI rendered image (contentType image/jpeg|png, the default)"),
    _r(READ, "/app/**", P.VIEW, "Orthanc Explorer (static pages)"),
    _r(READ, "/plugins/explorer.js", P.VIEW, "plugins' extensions of Orthanc Explorer"),
    # Orthanc Web Viewer 2.8 (Debian orthanc-webviewer): exactly the five routes its plugin registers
    # (``/web-viewer/{app,libs,series,is-stable-series,instances}/(.*)``); its pages and scripts hold no
    # patient data but are only of use to a viewer; the data routes are judged on their study
    # (bridge/pacs/scopes.py).  Any other path below /web-viewer matches no rule: denied
    _r(READ, "/web-viewer/app|libs/*/**", P.VIEW, "Orthanc Web Viewer: pages, scripts, images (static)"),
    _r(READ, "/web-viewer/series/*", P.VIEW,
       "Orthanc Web Viewer: a series' slices, patient name/ID, study and series description"),
    _r(READ, "/web-viewer/is-stable-series/*", P.VIEW, "Orthanc Web Viewer: whether a series is complete"),
    _r(READ, "/web-viewer/instances/*", P.VIEW, "Orthanc Web Viewer: one frame, decoded (JPEG or deflate in JSON)"),
    _r(READ, "/favicon.ico", P.VIEW, "icon"),
    # --- network peers: defining them is admin; send pushes to the configured ones;
    #     query/retrieve into this PACS has a permission of its own; HTTP proxies are denied
    _r(READ, "/modalities|peers", P.ADMIN, "peer definitions (hosts, ports)", when=EXPANDED),
    _r(READ, "/dicom-web/servers", P.ADMIN, "server definitions (URLs, users)", when=EXPANDED),
    _r(READ, "/modalities", P.SEND, "names of the configured modalities", instead=PEER_USERS),
    _r(READ, "/modalities/*", P.SEND, "operations of one modality", instead=PEER_USERS),
    _r(READ, "/dicom-web/servers", P.SEND, "names of the remote DICOMweb servers", instead=PEER_USERS),
    _r(READ, "/dicom-web/servers/*", P.SEND, "operations of one remote server", instead=PEER_USERS),
    _r(READ, "/peers", P.SEND, "names of the Orthanc peers", instead=[P.ADMIN]),
    _r(READ, "/peers/*", P.SEND, "operations of one Orthanc peer", instead=[P.ADMIN]),
    _r(frozenset({"PUT", "DELETE"}), "/modalities|peers/*", P.ADMIN, "define / remove a peer"),
    _r(frozenset({"PUT", "DELETE"}), "/dicom-web/servers/*", P.ADMIN, "define / remove a remote DICOMweb server"),
    _r(READ, "/modalities|peers/*/configuration", P.ADMIN, "one peer's definition"),
    _r("POST", "/modalities/*/echo", P.SEND, "C-ECHO a configured modality", instead=PEER_USERS),
    _r(READ, "/peers/*/system", P.SEND, "ping a configured peer", instead=[P.ADMIN]),
    _r("POST", "/modalities/*/store|store-straight|storage-commitment", P.SEND, "C-STORE to a modality"),
    _r("POST", "/peers/*/store|store-straight", P.SEND, "push to an Orthanc peer"),
    _r("POST", "/dicom-web/servers/*/stow", P.SEND, "STOW-RS to a remote DICOMweb server"),
    _r(READ, "/storage-commitment/*", P.SEND, "storage commitment report"),
    _r(
        "POST",
        "/storage-commitment/*/remove",
        P.DELETE,
        "delete the instances a remote modality committed",
        also=[P.SEND],
    ),
    _r(
        "POST",
        "/modalities/*/query|find|find-patient|find-study|find-series|find-instance|find-worklist|move",
        P.QUERY_RETRIEVE,
        "C-FIND / C-MOVE on a remote modality",
    ),
    _r(READ | {"POST", "DELETE"}, "/queries/**", P.QUERY_RETRIEVE, "answers of remote queries, retrieve them"),
    _r("POST", "/dicom-web/servers/*/qido|retrieve", P.QUERY_RETRIEVE, "QIDO-RS / WADO-RS from a remote server"),
    _r("POST", "/transfers/send", P.SEND, "accelerated transfer to a peer"),
    _r("POST", "/transfers/pull", P.QUERY_RETRIEVE, "accelerated transfer from a peer"),
    _r("POST", "/tools/dicom-echo", P.ADMIN, "C-ECHO a host given in the request"),
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
    _r(READ, "/plugins", P.ADMIN, "plugins"),
    _r(READ, "/plugins/*", P.ADMIN, "one plugin"),
    _r(READ, "/jobs", P.ADMIN, "jobs"),
    _r(READ, "/jobs/*", P.ADMIN, "one job"),
    _r(READ, "/jobs/*/*", P.ADMIN, "a job's output (an asynchronous archive)", also=[P.DOWNLOAD]),
    _r("POST", "/jobs/*/cancel|pause|resume|resubmit", P.ADMIN, "control a job"),
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


#: (method, path) -> the rules that match it, in order: the request filter asks about the same
#: URIs again and again (a viewer's frames, one study's metadata), and a dictionary hit is several
#: times cheaper than the normalisation checks and regular expressions.  Bounded (cleared when
#: full) so that a client sending endless distinct paths costs memory only up to the bound.  The
#: query string is not part of the key: rules with a ``when`` test are re-tested on every call.
_MEMO: dict[tuple[str, str], tuple[Route, ...]] = {}
MEMO_SIZE = 4096


def query_of(raw: str = "", extra: Mapping[str, str | Iterable[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """The query parameters of a raw query string (percent-decoded, every repetition kept) merged
    with ``extra`` (Orthanc's already-decoded ``get`` dictionary, or a framework's multidict)."""
    out: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
        out.setdefault(key, []).append(value)
    for key, values in (extra or {}).items():
        out.setdefault(str(key), []).extend([values] if isinstance(values, str) else [str(v) for v in values])
    return {k: tuple(v) for k, v in out.items()}


def route_for(
    method: str, path: str, query: Mapping[str, str | Iterable[str]] | None = None
) -> Route | None:
    """The rule that covers ``method path`` (``path`` may carry a query string; ``query`` adds
    parameters known apart, such as Orthanc's ``get``), or None: deny."""
    bare, _, raw = path.partition("?")
    key = (method, bare)
    try:
        matches = _MEMO[key]
    except KeyError:
        matches = _matches(method, bare)
        if len(_MEMO) >= MEMO_SIZE:
            _MEMO.clear()
        _MEMO[key] = matches
    if not matches or matches[0].when is None:
        return matches[0] if matches else None
    params = query_of(raw, query)
    for route in matches:
        if route.when is None or route.when.test(params):
            return route
    return None


def _matches(method: str, path: str) -> tuple[Route, ...]:
    """The rules that match, in table order, up to and including the first unconditional one."""
    if not _normalized(path):
        return ()
    method = method.upper()
    head = path[1:].split("/", 1)[0]
    found: list[Route] = []
    for methods, rx, route in _BUCKETS.get(head, ()):
        if method in methods and rx.fullmatch(path):
            found.append(route)
            if route.when is None:
                break
    return tuple(found)


def _match(method: str, path: str, query: Query | None = None) -> Route | None:
    """The long way round (no memo), for tests of the memo."""
    params = query or {}
    for route in _matches(method, path):
        if route.when is None or route.when.test(params):
            return route
    return None


def permission_for(method: str, path: str, query: Mapping[str, str | Iterable[str]] | None = None) -> Permission | None:
    """The rule's main permission (a rule may need more: see :meth:`Route.requires`)."""
    route = route_for(method, path, query)
    return None if route is None else route.permission


def table() -> list[dict[str, str]]:
    """The table as rows (for docs and the token service's metadata)."""
    return [
        {
            "methods": " ".join(sorted(r.methods)),
            "path": r.pattern,
            "permission": r.permission.value,
            "requires": r.requirement,
            "when": r.when.doc if r.when else "",
            "what": r.what,
        }
        for r in ROUTES
    ]
