"""Which study a request touches, and the study's department/institution/UID/patient.

A PACS token carries grants (:mod:`bridge.core.grants`), each limited or not to studies by
InstitutionalDepartmentName (0008,1040), InstitutionName (0008,0080), StudyInstanceUID or
PatientID; this module finds the studies a request touches so a grant can be checked against
them, and checks an upload's content (:func:`upload_allowed`).  Orthanc's request
filter sees only the URI, so the study behind ``/instances/{id}/frames/1`` is resolved through
Orthanc's own REST API (``rest_get``, ``orthanc.RestApiGet`` in the plugin) and cached, so a viewer
fetching hundreds of frames costs one lookup per instance, then dictionary hits.

Stdlib only (runs inside Orthanc).
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core.grants import Grant, StudyInfo, allows, why_not

#: Orthanc resource levels as they appear in URIs
LEVELS = ("patients", "studies", "series", "instances")
DEPARTMENT_TAG = "0008,1040"
INSTITUTION_TAG = "0008,0080"

RestGet = Callable[[str], Any]
RestPost = Callable[[str, str], Any]


@dataclass(frozen=True)
class Target:
    """The resource a request names: an Orthanc level + id, or a DICOMweb StudyInstanceUID."""

    level: str  # patients | studies | series | instances | study-uid | instance-uid | patient-id | patient-of-<level>
    key: str


@dataclass(frozen=True)
class Named:
    """What a request names: the resources it touches, or why a scoped token cannot be judged on it.

    ``targets`` empty and ``problem`` None: the request names no single resource (a list, a query
    across studies, a tool).  ``problem`` set: the query is ambiguous or names studies in a way the
    PACS may read differently than this module; a scoped token is refused then (fail closed).
    """

    targets: tuple[Target, ...] = ()
    problem: str | None = None
    #: the request reads files shipped with the PACS (a viewer's pages and scripts), no patient data:
    #: any grant holding the route's permission may have it, whatever its scope
    static: bool = False


NOTHING = Named()
STATIC = Named(static=True)
#: folders whose every file is part of a web application the PACS ships, never patient data: Orthanc
#: Explorer (core, ``/app/``) and the Orthanc Web Viewer 2.8's pages and libraries (served from the
#: plugin's own resources: ``/web-viewer/app/(.*)``, ``/web-viewer/libs/(.*)``)
STATIC_FOLDERS = ("/app/", "/web-viewer/app/", "/web-viewer/libs/")
#: single static files: the plugins' extensions of Orthanc Explorer (JavaScript)
STATIC_FILES = frozenset({"/plugins/explorer.js"})
#: an Orthanc resource id (patient, study, series, instance alike): the SHA-1 of its DICOM identifiers
#: as five groups of eight lower-case hex digits.  Orthanc answers nothing for another spelling
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
#: the Orthanc Web Viewer 2.8's image id in ``/web-viewer/instances/{id}``, parsed as the plugin parses it
#: (``^([a-z0-9]+)-([a-z0-9-]+)_([0-9]+)$``: compression, instance id, frame; checked on the Debian build),
#: with the compressions it knows: ``deflate`` or ``jpeg<quality>`` (``jpeg095`` is quality 95 to it)
WEB_VIEWER_IMAGE = re.compile(r"(deflate|jpeg[0-9]+)-([a-z0-9-]+)_([0-9]+)")
#: the web viewer's data routes and the level of the Orthanc id each one reads
WEB_VIEWER_DATA = {"series": "series", "is-stable-series": "series", "instances": "instances"}
#: target level prefix: the patient of a study/series/instance (``/studies/{id}/patient``)
PATIENT_OF = "patient-of-"
#: cache keys whose answer changes when a study is added: a patient gains it, a UID gains a copy
_GROWING = ("patients/", PATIENT_OF, "patient-id/", "study-uid/", "instance-uid/")
#: a DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters; anything else (wildcards ``*``/``?``,
#: ranges, spaces, ``+``) is no UID, so a UID-list value containing it is refused for scoped tokens
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
#: the spellings of StudyInstanceUID (0020,000D) the DICOMweb plugin 1.7 honours as a QIDO filter, checked on
#: Orthanc 1.10.1: the keyword exactly, or the 8 hex digits in any case.  ``0020,000D``, ``(0020,000D)``,
#: ``studyinstanceuid``, ``StudiesInstanceUID`` are *ignored* by the plugin (the query then lists
#: everything), so they must never count as "names one study".
_HONOURED_STUDY_KEY = re.compile(r"StudyInstanceUID|0020000[dD]")
#: WADO-URI's parameters (PS3.18 9.2), case-sensitive in the plugin
_WADO_KEYS = ("studyUID", "seriesUID", "objectUID")


def _squash(key: str) -> str:
    """A query key reduced to what any lenient parser might see: percent-decoded once more (a
    double-encoded key), lower-cased, punctuation and ``0x``/leading zeros dropped."""
    squashed = re.sub(r"[^0-9a-z]", "", urllib.parse.unquote(key).lower())
    if squashed.startswith("0x"):
        squashed = squashed[2:]
    return squashed.lstrip("0")


@functools.lru_cache(maxsize=1024)  # viewers send the same few keys again and again; bounded for the rest
def _is_study_uid_key(key: str) -> bool:
    """Whether a QIDO key is, or looks like, a spelling of StudyInstanceUID (0020,000D)."""
    squashed = _squash(key)
    return squashed == "20000d" or "studyinstanceuid" in squashed or "studiesinstanceuid" in squashed


def study_uids_of_query(query: Mapping[str, str] | None) -> Named:
    """The studies a QIDO query restricts itself to, read the way the DICOMweb plugin reads it.

    ``query`` is Orthanc's GET arguments as the filter gets them (checked on Orthanc 1.10.1): *not*
    percent-decoded, ``+`` kept, and a repeated key keeps its *last* value, which is also the value
    the plugin applies (it keeps the last value per tag).  Several keys for the one tag
    (``StudyInstanceUID`` and ``0020000D``) cannot be ordered from a dict: refused.  A spelling the
    plugin ignores is refused too (it would answer with every study), and so is anything that only
    decodes to a spelling of the tag.  A value is a list of UIDs separated by commas or backslashes
    (each one checked); empty values, wildcards and encoded characters (``%2C``) are refused.
    """
    keys = [k for k in (query or {}) if _is_study_uid_key(k)]
    if not keys:
        return NOTHING
    if len(keys) > 1:
        return Named(problem=f"StudyInstanceUID given {len(keys)} times in the query: ambiguous")
    key = keys[0]
    if _HONOURED_STUDY_KEY.fullmatch(key) is None:
        return Named(problem="a StudyInstanceUID spelling the PACS does not apply as a filter")
    uids = re.split(r"[\\,]", (query or {})[key])
    if not all(len(u) <= 64 and _UID.fullmatch(u) for u in uids):
        return Named(problem="StudyInstanceUID in the query is empty, a wildcard or not a UID")
    return Named(tuple(Target("study-uid", u) for u in dict.fromkeys(uids)))


def targets_of(path: str, query: Mapping[str, str] | None = None) -> Named:
    """The resources a request touches: the one in its path, the studies a QIDO query names, the
    instance a WADO-URI request returns."""
    bare = path.split("?", 1)[0]
    if bare.startswith(STATIC_FOLDERS) or bare in STATIC_FILES:
        return STATIC
    parts = bare.split("/")
    # ['', 'studies', '<id>', ...]
    if len(parts) >= 3 and parts[1] in LEVELS and parts[2]:
        if len(parts) >= 4 and parts[3] == "patient" and parts[1] != "patients":
            # the answer is the patient, listing all its studies: judged like /patients/{id}
            return Named((Target(PATIENT_OF + parts[1], parts[2]),))
        return Named((Target(parts[1], parts[2]),))
    if len(parts) >= 2 and parts[1] == "dicom-web":
        if len(parts) >= 4 and parts[2] == "studies" and parts[3]:
            named = study_uids_of_query(query)
            if named.problem or any(t.key != parts[3] for t in named.targets):
                return Named(problem="the query names another study than the path")
            return Named((Target("study-uid", parts[3]),))
        if 3 <= len(parts) <= 4 and parts[2] in ("studies", "series", "instances") and not "".join(parts[3:]):
            return study_uids_of_query(query)  # QIDO at the root of a level
        return NOTHING
    if len(parts) >= 2 and parts[1] == "wado":
        return _wado_target(query or {})
    if len(parts) >= 3 and parts[1] == "web-viewer" and parts[2] in WEB_VIEWER_DATA:
        return _web_viewer_target(parts[2], parts[3:])
    return NOTHING


def _web_viewer_target(route: str, rest: list[str]) -> Named:
    """The resource of a web viewer data route: the series of ``series/{id}`` and
    ``is-stable-series/{id}``, the instance inside ``instances/<compression>-<instance id>_<frame>``.

    Only the exact shape the plugin parses names a resource; anything else (another case, an encoded
    character, an id that is no Orthanc id, one id wrapped in another) is a problem, so a scoped token
    is refused rather than judged on a guess.  One trailing slash is what Orthanc drops before the
    plugin sees the id (checked), so it names the same resource; any other extra segment is not served.
    """
    if len(rest) == 2 and rest[1] == "":
        rest = rest[:1]
    if len(rest) != 1:
        return Named(problem=f"web viewer {route}: not exactly one id")
    key = rest[0]
    if route == "instances":
        image = WEB_VIEWER_IMAGE.fullmatch(key)
        if image is None:
            return Named(problem="web viewer image id is not <deflate|jpegNN>-<instance id>_<frame>")
        key = image[2]
    if ORTHANC_ID.fullmatch(key) is None:
        return Named(problem=f"web viewer {route}: not an Orthanc id")
    return Named((Target(WEB_VIEWER_DATA[route], key),))


def _wado_target(query: Mapping[str, str]) -> Named:
    """WADO-URI returns the instance ``objectUID`` names (the plugin then checks that it lies in
    ``studyUID``/``seriesUID``), so the request is judged on that instance's study."""
    lookalikes = [k for k in query if _squash(k) in {w.lower() for w in _WADO_KEYS} and k not in _WADO_KEYS]
    if lookalikes:
        return Named(problem="WADO-URI parameter in an unexpected spelling: " + ", ".join(sorted(lookalikes)))
    uid = query.get("objectUID", "")
    if not uid:
        return NOTHING
    if len(uid) > 64 or _UID.fullmatch(uid) is None:
        return Named(problem="WADO-URI objectUID is not a UID")
    return Named((Target("instance-uid", uid),))


def instance_info(tags: Mapping[str, Any]) -> StudyInfo:
    """The scope-relevant tags of an incoming instance (Orthanc's "simplified" tag JSON: keyword -> value)."""
    def text(name: str) -> str:
        value = tags.get(name, "")
        return value.strip() if isinstance(value, str) else ""

    return StudyInfo(orthanc_id="", study_uid=text("StudyInstanceUID"), patient_id=text("PatientID"),
                     department=text("InstitutionalDepartmentName"), institution=text("InstitutionName"))


def upload_allowed(
    uploaders: Iterable[Grant], instance: StudyInfo, existing: list[StudyInfo], patient: list[StudyInfo] | None = None
) -> tuple[bool, str]:
    """May one of ``uploaders`` (the token's grants holding ``upload``) store ``instance``?
    ``existing``: the stored study its StudyInstanceUID names; ``patient``: for an upload that copies
    stored data (``/tools/create-dicom`` with a ``Parent``), every study of the existing patient its
    PatientID names.  ONE grant must cover all of them (two grants never combine).

    Why both checks: Orthanc files an instance under the study its StudyInstanceUID names, whatever
    department the instance itself claims, so an in-scope department tag is not enough; and a new
    study must itself be in scope, or the uploader could create studies it may not see.  Why the
    patient: create-dicom copies the patient's tags (name, birth date ...) from one of its stored
    instances into the new one, which the uploader may then read.
    """
    grants = tuple(uploaders)
    chosen = allows(grants, (), [instance, *existing, *(patient or ())])
    if chosen is not None:
        return True, f"upload by {chosen.describe()}"
    if allows(grants, (), [instance]) is None:
        why = why_not(grants, [instance]) if grants else "no grant holds upload"
        return False, "upload: instance outside the token's scope (" + why + ")"
    if allows(grants, (), [instance, *existing]) is None:
        return False, "upload: the instance would join an existing study outside the token's scope"
    return False, "upload: the instance copies a patient who has studies outside the token's scope"


def joins_consistently(instance: StudyInfo, existing: list[StudyInfo]) -> tuple[bool, str]:
    """For instances stored without a request to attribute them to (modify/anonymize jobs, DICOMweb
    retrieve jobs): an instance may join an existing study only with that study's department and
    institution, so no job can move data into another department's study."""
    for study in existing:
        if (study.department, study.institution) != (instance.department, instance.institution):
            return False, "stored by a job: the instance would join an existing study of another department"
    return True, "consistent with its study"


def _json(answer: Any) -> Any:
    if isinstance(answer, bytes | bytearray):
        answer = answer.decode("utf-8")
    return json.loads(answer) if isinstance(answer, str) else answer


class StudyResolver:
    """Resource -> study attributes, through Orthanc's REST API, cached for ``ttl`` seconds.

    A missing resource resolves to None (not cached, so an upload right after is seen).
    Thread-safe enough for the plugin: one writer at a time, readers see whole entries.
    """

    def __init__(
        self,
        rest_get: RestGet,
        rest_post: RestPost,
        ttl: float = 300.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rest_get = rest_get
        self.rest_post = rest_post
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._studies: dict[str, tuple[float, list[StudyInfo]]] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every change: a lookup that raced one is not cached
        #: entries a change dropped, until their own expiry: for the audit trail only (:meth:`last_known`)
        self._retired: dict[str, tuple[float, list[StudyInfo]]] = {}
        self.lookups = 0

    def cached(self, target: Target) -> list[StudyInfo] | None:
        """The studies behind ``target`` if cached and fresh (the hot path: no REST call)."""
        entry = self._studies.get(target.level + "/" + target.key)
        if entry is not None and entry[0] > self.clock():
            return entry[1]
        return None

    def studies(self, target: Target, strict: bool = False) -> list[StudyInfo]:
        """The studies behind ``target`` (a patient may have several); [] when not found.

        A lookup that fails (Orthanc's REST API raising) is [] too, which denies a scoped request;
        ``strict`` raises instead, for callers to whom [] means "nothing there yet" (an upload).
        """
        hit = self.cached(target)
        if hit is not None:
            return hit
        generation = self._generation
        try:
            found = self._resolve(target)
        except Exception:
            if strict:
                raise
            found = []
        if found:
            with self._lock:
                if generation != self._generation:  # Orthanc changed while we looked: answer, don't keep
                    return found
                if len(self._studies) >= self.max_entries:
                    self._studies.clear()
                self._studies[target.level + "/" + target.key] = (self.clock() + self.ttl, found)
        return found

    def forget(self, target: Target) -> None:
        self._studies.pop(target.level + "/" + target.key, None)

    def changed(self, change: str) -> None:
        """Follow a change Orthanc reports (its on-change callback), so no decision rests on an old answer.

        * ``deleted`` (any level): everything goes.  A study deleted and stored again under another
          department gets the very same Orthanc ids, so a cached department would outlive it.
        * ``new-study``: the answers that grow with a new study go (a patient's studies, the copies of
          a UID); a study/series/instance id keeps its study while it exists, so those stay.
        """
        with self._lock:
            self._generation += 1
            if change == "deleted":
                dropped, self._studies = self._studies, {}
            elif change == "new-study":
                dropped = {k: self._studies.pop(k) for k in [k for k in self._studies if k.startswith(_GROWING)]}
            else:
                return
            retired = self._retired
            retired.update(dropped)
            while len(retired) > self.max_entries:  # oldest first
                retired.pop(next(iter(retired)))

    def last_known(self, target: Target) -> list[StudyInfo]:
        """The studies behind ``target`` even if a change has since dropped them (until the entry's own
        expiry), else what :meth:`studies` answers now.  For the audit trail only, never for a decision:
        a request allowed on a study that was deleted before the shipper resolved it must still name that
        study and its patient."""
        found = self.studies(target)
        if found:
            return found
        entry = self._retired.get(target.level + "/" + target.key)
        return entry[1] if entry is not None and entry[0] > self.clock() else []

    def _resolve(self, target: Target) -> list[StudyInfo]:
        self.lookups += 1
        # a UID may be stored under several patients (Orthanc ids hash PatientID + UIDs), and the
        # DICOMweb plugin answers with every copy: all of them are judged, never the first found
        if target.level == "study-uid":
            answer = _json(self.rest_post("/tools/lookup", target.key))
            return [self._study(a["ID"]) for a in answer if a.get("Type") == "Study"]
        if target.level == "instance-uid":
            answer = _json(self.rest_post("/tools/lookup", target.key))
            out = []
            for a in answer:
                if a.get("Type") == "Instance":
                    out.extend(self.studies(Target("instances", a["ID"])))
            return out
        if target.level == "patient-id":
            answer = _json(self.rest_post("/tools/lookup", target.key))
            out = []
            for a in answer:
                if a.get("Type") == "Patient":
                    out.extend(self.studies(Target("patients", a["ID"])))
            return out
        if target.level.startswith(PATIENT_OF):
            patient = _json(self.rest_get(f"/{target.level.removeprefix(PATIENT_OF)}/{target.key}/patient"))
            return self.studies(Target("patients", patient["ID"]))
        if target.level == "studies":
            return [self._study(target.key)]
        if target.level == "series":
            series = _json(self.rest_get(f"/series/{target.key}"))
            return self.studies(Target("studies", series["ParentStudy"]))
        if target.level == "instances":
            instance = _json(self.rest_get(f"/instances/{target.key}"))
            return self.studies(Target("series", instance["ParentSeries"]))
        if target.level == "patients":
            patient = _json(self.rest_get(f"/patients/{target.key}"))
            out: list[StudyInfo] = []
            for sid in patient.get("Studies", []):
                out.extend(self.studies(Target("studies", sid)))
            return out
        return []

    def _study(self, orthanc_id: str) -> StudyInfo:
        study = _json(self.rest_get(f"/studies/{orthanc_id}"))
        tags = study.get("MainDicomTags", {})
        patient = study.get("PatientMainDicomTags", {})
        department = ""
        institution = tags.get("InstitutionName", "")
        instances = _json(self.rest_get(f"/studies/{orthanc_id}/instances"))
        if instances:
            # InstitutionalDepartmentName is no "main tag" in Orthanc 1.10: read it from one instance
            first = instances[0]["ID"]
            simplified = _json(self.rest_get(f"/instances/{first}/simplified-tags"))
            department = str(simplified.get("InstitutionalDepartmentName", ""))
            institution = institution or str(simplified.get("InstitutionName", ""))
        return StudyInfo(
            orthanc_id=orthanc_id,
            study_uid=str(tags.get("StudyInstanceUID", "")),
            patient_id=str(patient.get("PatientID", "")),
            department=department.strip(),
            institution=str(institution).strip(),
        )
