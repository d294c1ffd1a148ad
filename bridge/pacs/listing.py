"""Listings and searches for tokens whose view is limited to some studies: the core's answer, filtered.

Why here and not in the request filter: Orthanc 1.10.1's filter can only allow or deny a whole
request, so a department-scoped user was refused every list and search.  The plugin therefore takes
over the listing routes with REST callbacks (a plugin callback shadows the core route; inside it
``orthanc.RestApiGet/Post`` reach the core) and this module decides what such a token sees.

Served here (:data:`SERVED`): ``GET /patients|studies|series|instances`` (with ``expand``, ``limit``,
``since`` and the format options ``full``/``short``/``simplify``) and ``POST /tools/find``.
``POST /instances`` (upload) shares its route with the instance list and is passed to the core
unchanged; every other method answers 405.

What a token sees:

* a grant that holds the listing's permission (``view``) everywhere (:func:`grants.unrestricted`):
  the core's answer, byte for byte (the request is passed through, never re-serialised);
* otherwise the resources whose study is covered by some grant holding ``view``
  (:func:`grants.visible`).  A series/instance goes with its study.  A **patient** is listed when at
  least one of its studies is visible, and its ``Studies`` list (expanded answer) names only the
  visible ones: a scoped user sees the patient's identity (they see it in any in-scope study's
  ``PatientMainDicomTags`` anyway) but not that other departments hold studies of that patient.
  Opening the patient itself (``/patients/{id}``) still needs every study in scope (the filter).

Paging (``limit``/``since`` or ``Limit``/``Since``), AFTER filtering: the core is asked for the whole
matching id list in its own order (no paging, no expansion: one database query), the ids are tested
in that order, the first ``since`` visible ones are skipped, up to ``limit`` are collected, and the
scan stops there.  A page is short only when the core has no more visible results; ``since`` counts
positions in the token's own (filtered) list, so consecutive pages neither overlap nor skip.  Only
the page is expanded (``GET /{level}/{id}`` per resource, the same JSON the core's ``expand``
gives).  A resource deleted between the scan and its expansion is left out.  A paged ``/tools/find``
first asks the core for a probe of ``8 x (since + limit)`` matches (at least 200) and pages those when
they hold enough visible results (or are all there is), else asks for the whole list
(:meth:`Lister._find_ids`).

Narrowing by the study index: at study, series and instance level, once the plugin's
:class:`bridge.pacs.study_index.StudyIndex` (every stored study with its department, institution,
patient and UID, kept complete through Orthanc's change log) is built, ``/tools/find`` adds
``StudyInstanceUID: <uid>\\<uid>...`` of the studies some grant covers to the query, and the core
filters and pages (``Limit`` = since + limit; the page is still cut here, so a UID the core answers
for an uncovered copy too cannot shift it).  Not narrowed: patient level, a query that names
StudyInstanceUID itself (any spelling), more than :data:`FIND_UID_FILTER_MAX` covered studies, an
index not built yet or that cannot vouch for completeness: those are scanned as above.  No covered
study at all: an empty answer without asking the core.  Every result is verified either way.

Parameter rules for restricted tokens (stricter than the core where the core wraps or crashes):
``limit``/``since`` come together or not at all (as in the core), decimal integers 0..2**31-1 (the
core wraps ``-1`` to "everything"); ``limit=0`` is an empty page (as in the core).  In
``/tools/find`` the keys are case-sensitive as in the core (``limit`` is not ``Limit`` and is passed to
the core, which ignores it); ``Limit``/``Since`` must be JSON integers >= 0 (``Limit: 0`` = no limit,
as in the core); ``Expand`` a boolean, an integer or null; ``Level`` any case of
Patient/Study/Series/Instance.  Everything else of the body (``Query``, ``CaseSensitive``, ``Full``,
``Short`` ...) goes to the core unchanged: whatever it matches, only visible resources come back.

Stdlib only (runs inside Orthanc); Orthanc's REST API comes in as callables so the logic is unit-tested.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core import grants as grants_mod
from bridge.core.grants import Grant, StudyInfo
from bridge.pacs.scopes import RestGet, RestPost, StudyResolver, Target, _is_study_uid_key
from bridge.pacs.study_index import StudyIndex, study_uids

#: the listing routes the plugin's callbacks serve, as the request filter sees them (a trailing
#: slash reaches the same callback: Orthanc drops empty URI components before routing)
LIST_LEVELS = ("patients", "studies", "series", "instances")
FIND = "/tools/find"
#: (method, path) pairs a callback serves; the filter lets a restricted token through ONLY to these
SERVED: frozenset[tuple[str, str]] = frozenset(
    {("GET", f"/{level}") for level in LIST_LEVELS} | {("GET", f"/{level}/") for level in LIST_LEVELS}
    | {("POST", FIND), ("POST", FIND + "/")}
)
#: the permission a listing needs (the route table's rule for these routes)
VIEW = ("view",)
#: /tools/find's Level (any case in the core) -> the URI level
FIND_LEVELS = {"patient": "patients", "study": "studies", "series": "series", "instance": "instances"}
#: the only Query keys a restricted token may use in a Patient-level /tools/find: the patient's own tags
#: (by name or as ``gggg,eeee``).  Orthanc matches a *patient* when any of its studies or series matches a
#: study/series-level key, so ``StudyDescription: ONCO*`` would answer yes/no about a study the token
#: cannot see (prefix by prefix, its description, accession number, dates...) for any patient it sees
PATIENT_QUERY_KEYS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs",
                                "0010,0010", "0010,0020", "0010,0030", "0010,0040", "0010,1000"})
#: GET arguments that change the JSON format of an expanded resource (Orthanc 1.10.1)
FORMAT_ARGS = ("full", "short", "simplify")
MAX_INT = 2**31 - 1
#: a paged /tools/find first asks the core for this many matches per wanted result (at least the minimum)
FIND_PROBE_FACTOR = 8
FIND_PROBE_MIN = 200
#: the most StudyInstanceUIDs a restricted /tools/find hands the core as a filter (beyond: scan)
FIND_UID_FILTER_MAX = 1000
#: the levels whose /tools/find may be narrowed by the study's UID (a patient-level query may not
#: name study tags for a restricted token: PATIENT_QUERY_KEYS)
UID_FILTER_LEVELS = ("studies", "series", "instances")
_DECIMAL = re.compile(r"[0-9]{1,10}")


class Refused(Exception):
    """A request this module answers with an error status (bad parameter, no context)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    """What a callback sends back: ``body`` with ``mime`` under ``status``."""

    status: int
    body: bytes = b""
    mime: str = "application/json"


def same_request(filtered_uri: str, callback_uri: str) -> bool:
    """Is the callback serving the request the filter judged?  (Orthanc hands the filter the decoded
    path as sent and the callback its normalised form: ``/studies/`` reaches ``/studies``.)"""
    def norm(uri: str) -> str:
        return "/" + "/".join(p for p in uri.split("?", 1)[0].split("/") if p)

    return norm(filtered_uri) == norm(callback_uri)


def serves(method: str, path: str) -> bool:
    """Does a listing callback serve exactly this request?  (The filter's exception for restricted tokens.)"""
    return (method.upper(), path) in SERVED


def _json(answer: Any) -> Any:
    if isinstance(answer, bytes | bytearray):
        answer = answer.decode("utf-8")
    return json.loads(answer) if isinstance(answer, str) else answer


def _dump(value: Any) -> bytes:
    return json.dumps(value, indent=3).encode("utf-8")


def page(ids: Iterable[str], visible: Callable[[str], bool], since: int = 0, limit: int | None = None) -> list[str]:
    """THE paging algorithm: scan ``ids`` in order, skip the first ``since`` visible ones, collect up to
    ``limit`` (None: all) visible ones, stop as soon as the page is full (no test beyond it)."""
    out: list[str] = []
    if limit == 0:
        return out
    skipped = 0
    for rid in ids:
        if not visible(rid):
            continue
        if skipped < since:
            skipped += 1
            continue
        out.append(rid)
        if limit is not None and len(out) >= limit:
            break
    return out


class Visibility:
    """Which resources a token's grants let a listing show (per request; the resolver caches across)."""

    def __init__(self, grants: Iterable[Grant], resolver: StudyResolver, required: Iterable[str] = VIEW):
        self.grants = grants_mod.holding(grants, required)
        self.required = tuple(required)
        self.resolver = resolver
        self._study_memo: dict[str, bool] = {}

    def study(self, info: StudyInfo) -> bool:
        hit = self._study_memo.get(info.orthanc_id)
        if hit is None:
            hit = any(g.covers(info) for g in self.grants)
            self._study_memo[info.orthanc_id] = hit
        return hit

    def studies_of(self, level: str, rid: str) -> list[StudyInfo]:
        return self.resolver.studies(Target(level, rid))

    def resource(self, level: str, rid: str) -> bool:
        """A patient: one visible study is enough; anything else: its study must be visible.  A resource
        whose study cannot be resolved (gone, lookup failed) is not visible (fail closed)."""
        if not self.grants:
            return False
        found = self.studies_of(level, rid)
        if level == "patients":
            return any(self.study(s) for s in found)
        return bool(found) and all(self.study(s) for s in found)

    def visible_studies_of_patient(self, rid: str) -> set[str]:
        return {s.orthanc_id for s in self.studies_of("patients", rid) if self.study(s)}

    def uid(self, study_uid: str) -> bool:
        """A study named by its StudyInstanceUID: every stored copy must be visible (a UID may be stored
        under several patients; the DICOMweb plugin answers with each copy)."""
        if not self.grants or not study_uid:
            return False
        found = self.resolver.studies(Target("study-uid", study_uid))
        return bool(found) and all(self.study(s) for s in found)


def _int_arg(get: Mapping[str, str], name: str) -> int:
    value = get[name]
    if _DECIMAL.fullmatch(value) is None or int(value) > MAX_INT:
        raise Refused(400, f"{name}: a decimal integer from 0 to {MAX_INT} expected, got {value[:20]!r}")
    return int(value)


class Lister:
    """The listing callbacks' logic over Orthanc's core REST API."""

    def __init__(self, rest_get: RestGet, rest_post: RestPost, resolver: StudyResolver,
                 index: StudyIndex | None = None):
        self.rest_get = rest_get
        self.rest_post = rest_post
        self.resolver = resolver
        self.index = index
        #: (index version, the grants' scopes) -> the UIDs they may cover; a few entries (one per
        #: distinct scope in use), dropped whole when the index changes
        self._uid_lists: dict[tuple[int, str], list[str]] = {}
        self._uid_lock = threading.Lock()

    # ------------------------------------------------------------------ GET /{level}

    def list_resources(self, level: str, get: Mapping[str, str], grants: Iterable[Grant]) -> Answer:
        """``GET /{level}`` for a token with these grants (``get``: Orthanc's decoded arguments)."""
        if level not in LIST_LEVELS:
            raise Refused(404, f"no listing of {level!r}")
        held = tuple(grants)
        if grants_mod.unrestricted(held, VIEW):
            return Answer(200, self._raw(self.rest_get(f"/{level}" + raw_query(get))))
        since, limit = 0, None
        if ("limit" in get) != ("since" in get):
            raise Refused(400, "limit and since: give both or neither")
        if "limit" in get:
            limit, since = _int_arg(get, "limit"), _int_arg(get, "since")
        visibility = Visibility(held, self.resolver)
        ids = [str(i) for i in _json(self.rest_get(f"/{level}"))]
        chosen = page(ids, lambda rid: visibility.resource(level, rid), since, limit)
        if "expand" not in get:
            return Answer(200, _dump(chosen))
        fmt = raw_query({k: v for k, v in get.items() if k in FORMAT_ARGS})
        return Answer(200, _dump(self._expand(level, chosen, visibility, fmt)))

    # ------------------------------------------------------------------ POST /tools/find

    def find(self, body: bytes | str, grants: Iterable[Grant]) -> Answer:
        """``POST /tools/find`` for a token with these grants."""
        held = tuple(grants)
        if grants_mod.unrestricted(held, VIEW):
            return Answer(200, self._raw(self.rest_post(FIND, body)))
        try:
            request = _json(body)
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "/tools/find: the body is not JSON") from None
        if not isinstance(request, dict):
            raise Refused(400, "/tools/find: the body must be a JSON object")
        raw_level = request.get("Level")
        level = FIND_LEVELS.get(raw_level.lower()) if isinstance(raw_level, str) else None
        if level is None:
            raise Refused(400, "/tools/find: Level must be Patient, Study, Series or Instance")
        limit = _find_int(request, "Limit")
        since = _find_int(request, "Since")
        expand = request.get("Expand")
        if expand is not None and type(expand) not in (bool, int):
            raise Refused(400, "/tools/find: Expand must be a boolean")
        if level == "patients":
            query = request.get("Query")
            if not isinstance(query, dict):
                raise Refused(400, "/tools/find: Query must be a JSON object")
            other = sorted(k for k in query if k.upper() not in PATIENT_QUERY_KEYS and k not in PATIENT_QUERY_KEYS)
            if other:
                raise Refused(400, f"/tools/find: at Level Patient a restricted token may query the patient's own "
                                   f"tags only (PatientName, PatientID, PatientBirthDate, PatientSex, "
                                   f"OtherPatientIDs), not {', '.join(map(str, other))[:200]}")
        inner = {k: v for k, v in request.items() if k not in ("Limit", "Since", "Expand")}
        visibility = Visibility(held, self.resolver)
        visible = lambda rid: visibility.resource(level, rid)  # noqa: E731
        want = (since or 0) + limit if limit else None
        narrowed = self._uid_filter(level, inner, visibility)
        if narrowed is not None and not narrowed:
            return Answer(200, _dump([]))  # no stored study is covered by any grant: nothing to find
        ids = (self._narrowed_ids(inner, narrowed, want, visible) if narrowed is not None
               else self._find_ids(inner, want, visible))
        chosen = page(ids, visible, since or 0, limit or None)
        if not expand:
            return Answer(200, _dump(chosen))
        fmt = raw_query({k.lower(): "" for k in ("Full", "Short") if request.get(k) is True})
        return Answer(200, _dump(self._expand(level, chosen, visibility, fmt)))

    def _find_ids(self, inner: dict[str, Any], want: int | None, visible: Callable[[str], bool]) -> list[str]:
        """The core's matching ids, in its order: enough of them for ``want`` visible ones, or all.

        Why a probe first: the core's cost grows with the rows it returns, and a page (``Limit``) of a
        department that holds a fair share of the archive is found among the first few hundred.  The
        probe asks for the first ``FIND_PROBE_FACTOR * want`` (at least ``FIND_PROBE_MIN``) matches; if
        the core had no more, or they hold ``want`` visible ones, they are the list to page (the core's
        order, a prefix of its full answer, as its own paging assumes); else the full list is fetched.
        """
        if want is not None:
            probe = max(FIND_PROBE_MIN, FIND_PROBE_FACTOR * want)
            ids = [str(i) for i in _json(self.rest_post(FIND, json.dumps({**inner, "Limit": probe})))]
            if len(ids) < probe or sum(1 for rid in ids if visible(rid)) >= want:
                return ids
        return [str(i) for i in _json(self.rest_post(FIND, json.dumps(inner)))]

    def _uid_filter(self, level: str, inner: dict[str, Any], visibility: Visibility) -> list[str] | None:
        """The StudyInstanceUIDs of every stored study some grant may cover (from the warm
        :class:`StudyIndex`), for the core to filter on; None when the query cannot be narrowed so
        (no index or not complete, patient level, the query names StudyInstanceUID itself, too many).

        Why: the department is no tag Orthanc 1.10 indexes, the UID is; the core then filters and
        pages instead of the plugin reading the whole match list (docs/performance.md)."""
        if self.index is None or level not in UID_FILTER_LEVELS:
            return None
        query = inner.get("Query")
        if not isinstance(query, dict) or any(_is_study_uid_key(str(k)) for k in query):
            return None
        current = self.index.current()
        if current is None:
            return None
        version, studies = current
        key = (version, json.dumps(sorted(json.dumps(g.scope(), sort_keys=True) for g in visibility.grants)))
        with self._uid_lock:
            uids = self._uid_lists.get(key)
        if uids is None:
            uids = study_uids(studies, lambda info: any(g.covers(info) for g in visibility.grants))
            with self._uid_lock:
                if any(v != version for v, _ in self._uid_lists) or len(self._uid_lists) >= 64:
                    self._uid_lists.clear()
                self._uid_lists[key] = uids
        return uids if len(uids) <= FIND_UID_FILTER_MAX else None

    def _narrowed_ids(self, inner: dict[str, Any], uids: list[str], want: int | None,
                      visible: Callable[[str], bool]) -> list[str]:
        """The core's matches among ``uids`` (the user's query AND StudyInstanceUID in the list), in
        its order.  For a page, the core is asked for ``want`` matches first: all of them are
        normally visible (the list holds only covered studies); when some are not (a UID stored
        under a second, uncovered patient), the whole narrowed list is fetched and paged here."""
        narrowed = {**inner, "Query": {**inner["Query"], "StudyInstanceUID": "\\".join(uids)}}
        if want is not None:
            ids = [str(i) for i in _json(self.rest_post(FIND, json.dumps({**narrowed, "Limit": want})))]
            if len(ids) < want or sum(1 for rid in ids if visible(rid)) >= want:
                return ids
        return [str(i) for i in _json(self.rest_post(FIND, json.dumps(narrowed)))]

    # ------------------------------------------------------------------ shared

    def _expand(self, level: str, ids: list[str], visibility: Visibility, fmt: str) -> list[Any]:
        out: list[Any] = []
        for rid in ids:
            try:
                item = _json(self.rest_get(f"/{level}/{rid}{fmt}"))
            except Exception:  # noqa: S112 - deleted since the scan: left out, never an error for the list
                continue
            if level == "patients" and isinstance(item, dict):
                keep = visibility.visible_studies_of_patient(rid)
                item["Studies"] = [s for s in item.get("Studies", []) if s in keep]
                item.pop("LastUpdate", None)  # it moves when another department stores a study
            out.append(item)
        return out

    @staticmethod
    def _raw(answer: Any) -> bytes:
        if isinstance(answer, bytes | bytearray):
            return bytes(answer)
        if isinstance(answer, str):
            return answer.encode("utf-8")
        return _dump(answer)


def _find_int(request: Mapping[str, Any], key: str) -> int | None:
    if key not in request:
        return None
    value = request[key]
    if type(value) is not int or value < 0 or value > MAX_INT:
        raise Refused(400, f"/tools/find: {key} must be an integer from 0 to {MAX_INT}")
    return value


def raw_query(get: Mapping[str, str]) -> str:
    """Orthanc's GET arguments as a query string again, to pass a request on.  Orthanc 1.10.1 hands
    filters and callbacks the arguments NOT percent-decoded (checked: the DICOMweb plugin matches
    ``PatientID=P*`` but not ``PatientID=P%2A``), so they are joined as received, never re-encoded;
    a raw value cannot hold ``&`` or ``=``-splitting surprises it did not have in the original request."""
    if not get:
        return ""
    return "?" + "&".join(f"{k}={v}" if v else k for k, v in get.items())
