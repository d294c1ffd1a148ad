"""Every stored study with its scope attributes, kept in step with Orthanc's change log.

Why: a department-scoped user's paged ``/tools/find`` had to fetch the core's *whole* match list and
test it in order until the page was full, because the department (InstitutionalDepartmentName) is
not a tag Orthanc 1.10 indexes: asking the core to filter on it makes the core read one DICOM file
per candidate (measured: 15x slower than the query itself).  With this index the listing module
(:mod:`bridge.pacs.listing`) knows which studies the token's grants can cover at all and asks the
core for those only, by StudyInstanceUID (an indexed tag), so the core filters and pages.

The index only *narrows* what the core is asked for; it decides nothing.  Every result the core
returns is still checked against the token's grants through the study resolver, as before.  What the
index must therefore never do is *miss* a study a grant covers, so it is complete or it is not used:

* it is built from ``GET /studies`` (every study id) with each study's attributes from the resolver,
  after noting the change log's last sequence number;
* before each use it reads the change log since that number (``GET /changes?since=``: ordered,
  synchronous, not the asynchronous change callback): a ``NewStudy`` adds the study, and any
  ``Deleted`` change drops the whole index (a study deleted and stored again may have another
  department; a deleted instance may have been the one the department was read from), as does a
  change log that went backwards (cleared);
* an archive larger than ``max_studies`` is not indexed (callers fall back to scanning).

Building reads every study once (three core calls each when the scope cache is cold: seconds for
thousands of studies), so it runs in a background thread: the query that finds no index is answered
by scanning, as without one, and the index serves the queries after the build.

Stdlib only (runs inside Orthanc).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from bridge.core.grants import StudyInfo
from bridge.pacs.scopes import RestGet, StudyResolver, Target

#: change-log entries read per request to Orthanc while catching up
CHANGES_PAGE = 1000
#: archives up to this many studies are indexed (one StudyInfo each, a few hundred bytes)
MAX_STUDIES = 500_000


def _json(answer: Any) -> Any:
    if isinstance(answer, bytes | bytearray):
        answer = answer.decode("utf-8")
    return json.loads(answer) if isinstance(answer, str) else answer


class StudyIndex:
    """Orthanc study id -> :class:`StudyInfo` for every stored study (see the module docstring)."""

    def __init__(self, rest_get: RestGet, resolver: StudyResolver, max_studies: int = MAX_STUDIES,
                 background: bool = True):
        self.rest_get = rest_get
        self.resolver = resolver
        self.max_studies = max_studies
        #: build in a thread (the plugin); False: build inside :meth:`current` (tests)
        self.background = background
        self._builder: threading.Thread | None = None
        self._lock = threading.Lock()
        self._studies: dict[str, StudyInfo] | None = None
        self._seq = 0
        #: bumped whenever the set of studies changes: callers key their derived caches on it
        self.version = 0
        self.builds = 0

    def current(self) -> tuple[int, dict[str, StudyInfo]] | None:
        """``(version, studies)``, complete as of the change log's last entry, or None when the index
        cannot vouch for completeness (not built yet, too large, a lookup failed): the caller scans
        instead.  Without an index a build starts (in the background unless ``background`` is off)."""
        if self._studies is None and self.background:
            self._start_build()
            return None
        with self._lock:
            try:
                if self._studies is not None:
                    self._catch_up()
                if self._studies is None and not self.background:
                    self._build()
            except Exception:  # Orthanc's REST API failed: no index this time, never a wrong one
                self._drop()
                return None
            return (self.version, self._studies) if self._studies is not None else None

    def _start_build(self) -> None:
        builder = self._builder
        if builder is not None and builder.is_alive():
            return
        self._builder = threading.Thread(target=self._build_now, name="pacs-bridge-study-index", daemon=True)
        self._builder.start()

    def _build_now(self) -> None:
        with self._lock:
            if self._studies is not None:
                return
            try:
                self._build()
            except Exception:  # tried again at the next query that wants the index
                self._drop()

    def _drop(self) -> None:
        self._studies = None
        self.version += 1

    def _build(self) -> None:
        last = int(_json(self.rest_get("/changes?last")).get("Last", 0))
        ids = [str(i) for i in _json(self.rest_get("/studies"))]
        if len(ids) > self.max_studies:
            return
        studies: dict[str, StudyInfo] = {}
        for sid in ids:
            found = self.resolver.studies(Target("studies", sid), strict=True)
            if found:  # deleted meanwhile: its Deleted change (after ``last``) will drop the index
                studies[sid] = found[0]
        self._studies, self._seq = studies, last
        self.version += 1
        self.builds += 1
        self._catch_up()  # what changed while the list was read

    def _catch_up(self) -> None:
        studies = self._studies
        assert studies is not None
        while True:
            page = _json(self.rest_get(f"/changes?since={self._seq}&limit={CHANGES_PAGE}"))
            last = int(page.get("Last", 0))
            if last < self._seq:  # the change log was cleared: nothing can be vouched for
                self._drop()
                return
            added = False
            for change in page.get("Changes", []):
                kind = change.get("ChangeType")
                if kind == "Deleted":
                    self._drop()
                    return
                if kind == "NewStudy" and change.get("ResourceType") == "Study":
                    sid = str(change.get("ID", ""))
                    found = self.resolver.studies(Target("studies", sid), strict=True)
                    if found:
                        studies[sid] = found[0]
                        added = True
            self._seq = max(self._seq, last)
            if added:
                self.version += 1
                if len(studies) > self.max_studies:
                    self._drop()
                    return
            if page.get("Done", True) or not page.get("Changes"):
                return


def study_uids(studies: dict[str, StudyInfo], covered: Callable[[StudyInfo], bool]) -> list[str]:
    """The StudyInstanceUIDs of the indexed studies ``covered`` accepts, each once, in a stable order."""
    return sorted({info.study_uid for info in studies.values() if info.study_uid and covered(info)})
