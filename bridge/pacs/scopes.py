"""Which study a request touches, the study's department/institution, and the token's scope check.

A PACS token carries ``scopes: {departments: [...], institutions: [...]}``; empty lists mean "every
study" (bridge/policy/model.py).  A non-empty list restricts the user to studies whose
InstitutionalDepartmentName (0008,1040) / InstitutionName (0008,0080) is in it.  Orthanc's request
filter sees only the URI, so the study behind ``/instances/{id}/frames/1`` is resolved through
Orthanc's own REST API (``rest_get``, ``orthanc.RestApiGet`` in the plugin) and cached, so a viewer
fetching hundreds of frames costs one lookup per instance, then dictionary hits.

Stdlib only (runs inside Orthanc).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Orthanc resource levels as they appear in URIs
LEVELS = ("patients", "studies", "series", "instances")
DEPARTMENT_TAG = "0008,1040"
INSTITUTION_TAG = "0008,0080"

RestGet = Callable[[str], Any]
RestPost = Callable[[str, str], Any]


@dataclass(frozen=True)
class StudyInfo:
    """What the scope check and the audit trail need to know about one study."""

    orthanc_id: str
    study_uid: str
    patient_id: str
    department: str
    institution: str


@dataclass(frozen=True)
class Target:
    """The resource a request names: an Orthanc level + id, or a DICOMweb StudyInstanceUID."""

    level: str  # patients | studies | series | instances | study-uid
    key: str


def target_of(path: str, get: Mapping[str, str] | None = None) -> Target | None:
    """The single resource in a request path (None: a list, a query, or no patient data)."""
    parts = path.split("?", 1)[0].split("/")
    # ['', 'studies', '<id>', ...]
    if len(parts) >= 3 and parts[1] in LEVELS and parts[2]:
        return Target(parts[1], parts[2])
    if len(parts) >= 4 and parts[1] == "dicom-web" and parts[2] == "studies" and parts[3]:
        return Target("study-uid", parts[3])
    if get:
        if len(parts) >= 2 and parts[1] == "wado" and get.get("studyUID"):
            return Target("study-uid", get["studyUID"])
        if len(parts) == 3 and parts[1] == "dicom-web" and parts[2] == "studies":
            uid = get.get("StudyInstanceUID") or get.get("0020000D")
            if uid and "," not in uid and "*" not in uid and "?" not in uid:
                return Target("study-uid", uid)
    return None


def allowed(claims: Mapping[str, Any], study: StudyInfo | None) -> tuple[bool, str]:
    """Does the token's department/institution scope cover this study?"""
    departments, institutions = token_scopes(claims)
    if not departments and not institutions:
        return True, "unscoped"
    if study is None:
        return False, "study not found: cannot check the token's scope"
    if departments and study.department not in departments:
        return False, "study's department is outside the token's scope"
    if institutions and study.institution not in institutions:
        return False, "study's institution is outside the token's scope"
    return True, "in scope"


def token_scopes(claims: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(departments, institutions); a malformed ``scopes`` claim is an empty-but-present scope that
    matches nothing (fail closed), never "unscoped"."""
    scopes = claims.get("scopes")
    if scopes is None:
        return frozenset(), frozenset()
    if not isinstance(scopes, Mapping):
        return frozenset({"\x00malformed"}), frozenset()

    def names(key: str) -> frozenset[str]:
        value = scopes.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return frozenset({"\x00malformed"})
        return frozenset(value)

    return names("departments"), names("institutions")


def is_scoped(claims: Mapping[str, Any]) -> bool:
    """Same answer as ``any(token_scopes(claims))`` without building sets: this runs on every request.

    A falsy value is an empty list; any truthy one is either a real scope or malformed (which
    :func:`token_scopes` turns into a scope that matches nothing), so scoped either way.
    """
    scopes = claims.get("scopes")
    if scopes is None:
        return False
    if not isinstance(scopes, Mapping):
        return True
    return bool(scopes.get("departments") or scopes.get("institutions"))


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
        self.lookups = 0

    def cached(self, target: Target) -> list[StudyInfo] | None:
        """The studies behind ``target`` if cached and fresh (the hot path: no REST call)."""
        entry = self._studies.get(target.level + "/" + target.key)
        if entry is not None and entry[0] > self.clock():
            return entry[1]
        return None

    def studies(self, target: Target) -> list[StudyInfo]:
        """The studies behind ``target`` (a patient may have several); [] when not found."""
        hit = self.cached(target)
        if hit is not None:
            return hit
        try:
            found = self._resolve(target)
        except Exception:
            found = []
        if found:
            with self._lock:
                if len(self._studies) >= self.max_entries:
                    self._studies.clear()
                self._studies[target.level + "/" + target.key] = (self.clock() + self.ttl, found)
        return found

    def forget(self, target: Target) -> None:
        self._studies.pop(target.level + "/" + target.key, None)

    def _resolve(self, target: Target) -> list[StudyInfo]:
        self.lookups += 1
        if target.level == "study-uid":
            answer = _json(self.rest_post("/tools/lookup", target.key))
            ids = [a["ID"] for a in answer if a.get("Type") == "Study"]
            return [self._study(i) for i in ids[:1]]
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
