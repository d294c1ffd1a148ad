"""A restricted /tools/find narrowed by the study index (bridge/pacs/study_index.py): the core is asked
for the covered studies' UIDs only and pages them itself, the answer is exactly what the scan gives,
every result is still verified, and the index never misses a study (new studies, deletions, a
cleared change log, a UID stored twice, a query naming the UID itself)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_listing import CARDIO, DEPTS, EVERYWHERE, Archive, _study_of, grants, ids

from bridge.core.grants import StudyInfo
from bridge.pacs import listing
from bridge.pacs.listing import Lister
from bridge.pacs.scopes import StudyResolver
from bridge.pacs.study_index import StudyIndex


class LoggedArchive(Archive):
    """The archive with Orthanc's change log (``/changes``), UID-list filters in /tools/find (a
    backslash-separated list, as Orthanc reads it), studies added and deleted, and UIDs that may be
    shared by two studies (one UID under two patients)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[dict[str, Any]] = []
        self.uids: dict[str, str] = {}
        self.finds: list[dict[str, Any]] = []
        for sid in self.studies:
            self.log("NewStudy", sid)

    def uid(self, sid: str) -> str:
        return self.uids.get(sid, super().uid(sid))

    def log(self, kind: str, sid: str) -> None:
        self.changes.append({"Seq": len(self.changes) + 1, "ChangeType": kind, "ResourceType": "Study", "ID": sid})

    def add(self, sid: str, dept: str, uid: str | None = None) -> None:
        self.studies[sid] = dept
        self.patient[sid] = f"p{sid[1:]}"
        if uid:
            self.uids[sid] = uid
        self.log("NewStudy", sid)

    def delete(self, sid: str) -> None:
        del self.studies[sid]
        self.log("Deleted", sid)

    def get(self, uri: str) -> Any:
        if uri.startswith("/changes"):
            self.calls.append(uri)
            last = self.changes[-1]["Seq"] if self.changes else 0
            if uri == "/changes?last":
                return {"Changes": self.changes[-1:], "Done": True, "Last": last}
            args = dict(a.split("=") for a in uri.split("?", 1)[1].split("&"))
            newer = [c for c in self.changes if c["Seq"] > int(args["since"])][:int(args["limit"])]
            return {"Changes": newer, "Done": not newer or newer[-1]["Seq"] == last,
                    "Last": newer[-1]["Seq"] if newer else last}
        return super().get(uri)

    def post(self, uri: str, body: Any) -> Any:
        if uri != "/tools/find":
            return super().post(uri, body)
        self.calls.append(uri)
        request = json.loads(body)
        self.finds.append(request)
        level = listing.FIND_LEVELS[request["Level"].lower()]
        wanted = request.get("Query", {}).get("StudyInstanceUID")
        found = self.ids(level)
        if wanted:
            allowed = set(wanted.split("\\"))
            found = [i for i in found if self.uid(_study_of(i)) in allowed]
        if request.get("Limit"):
            found = found[request.get("Since", 0):][:request["Limit"]]
        return json.dumps(found)


@pytest.fixture
def archive() -> LoggedArchive:
    return LoggedArchive()


def _listers(archive: LoggedArchive) -> tuple[Lister, Lister]:
    """(indexed, scanning): the same archive, with and without the index."""
    resolver = StudyResolver(archive.get, archive.post)
    indexed = Lister(archive.get, archive.post, resolver, index=StudyIndex(archive.get, resolver, background=False))
    return indexed, Lister(archive.get, archive.post, StudyResolver(archive.get, archive.post))


def _find(lister: Lister, level: str, who: Any = CARDIO, **extra: Any) -> list[str]:
    return ids(lister.find(json.dumps({"Level": level, "Query": {}, **extra}), who))


@pytest.mark.parametrize("level", ["Study", "Series", "Instance"])
@pytest.mark.parametrize("paging", [{}, {"Limit": 1}, {"Limit": 2}, {"Limit": 2, "Since": 1}, {"Limit": 5, "Since": 2},
                                    {"Since": 1}, {"Limit": 0}, {"Limit": 1, "Since": 9}])
def test_the_narrowed_answer_is_exactly_the_scanned_one(archive: LoggedArchive, level: str,
                                                        paging: dict[str, int]) -> None:
    indexed, scanning = _listers(archive)
    assert _find(indexed, level, **paging) == _find(scanning, level, **paging)


def test_the_core_filters_and_pages_never_the_whole_list(archive: LoggedArchive) -> None:
    indexed, _ = _listers(archive)
    assert _find(indexed, "Study", Limit=2) == ["s0", "s3"]
    (last,) = archive.finds[-1:]
    assert set(last["Query"]["StudyInstanceUID"].split("\\")) == {"1.2.0", "1.2.3", "1.2.7"}
    assert last["Limit"] == 2 and "Since" not in last
    assert all("StudyInstanceUID" in f["Query"] for f in archive.finds)  # never the unfiltered list
    # consecutive pages neither overlap nor skip
    pages = [_find(indexed, "Study", Limit=1, Since=k) for k in range(4)]
    assert pages == [["s0"], ["s3"], ["s7"], []]


def test_a_new_study_in_scope_appears_at_the_next_find(archive: LoggedArchive) -> None:
    indexed, _ = _listers(archive)
    assert _find(indexed, "Study") == ["s0", "s3", "s7"]
    archive.add("s10", "Cardio")
    archive.add("s11", "Other")
    assert _find(indexed, "Study") == ["s0", "s3", "s7", "s10"]


def test_a_deletion_rebuilds_the_index_and_a_restored_study_is_judged_anew(archive: LoggedArchive) -> None:
    resolver = StudyResolver(archive.get, archive.post)
    index = StudyIndex(archive.get, resolver, background=False)
    indexed = Lister(archive.get, archive.post, resolver, index=index)
    assert _find(indexed, "Study") == ["s0", "s3", "s7"]
    builds = index.builds
    archive.delete("s3")
    resolver.changed("deleted")  # what the plugin's change callback does
    assert _find(indexed, "Study") == ["s0", "s7"]
    assert index.builds == builds + 1
    archive.delete("s4")
    resolver.changed("deleted")
    archive.add("s4", "Cardio")  # the same id again, now Cardiology
    assert _find(indexed, "Study") == ["s0", "s7", "s4"]


def test_a_cleared_change_log_rebuilds_the_index(archive: LoggedArchive) -> None:
    resolver = StudyResolver(archive.get, archive.post)
    index = StudyIndex(archive.get, resolver, background=False)
    indexed = Lister(archive.get, archive.post, resolver, index=index)
    _find(indexed, "Study")
    archive.changes.clear()
    archive.add("s12", "Cardio")  # seq 1 again: behind the index's position
    assert _find(indexed, "Study") == ["s0", "s3", "s7", "s12"]
    assert index.builds == 2


def test_a_uid_stored_under_a_covered_and_an_uncovered_study(archive: LoggedArchive) -> None:
    """s13 (Other) shares s0's UID: the core answers both for that UID; only s0 is shown, and paging
    still counts visible results only."""
    archive.add("s13", "Other", uid="1.2.0")
    indexed, scanning = _listers(archive)
    for paging in ({}, {"Limit": 3}, {"Limit": 1, "Since": 2}, {"Limit": 2, "Since": 1}):
        assert _find(indexed, "Study", **paging) == _find(scanning, "Study", **paging)
    assert "s13" not in _find(indexed, "Study")


def test_every_result_is_still_verified_even_if_the_index_were_wrong(archive: LoggedArchive) -> None:
    resolver = StudyResolver(archive.get, archive.post)
    index = StudyIndex(archive.get, resolver, background=False)
    indexed = Lister(archive.get, archive.post, resolver, index=index)
    _find(indexed, "Study")
    _version, studies = index.current()  # type: ignore[misc]
    studies["s1"] = StudyInfo("s1", "1.2.1", "p-mix", "Cardio", "")  # a lie: s1 is Other
    index.version += 1
    assert _find(indexed, "Study") == ["s0", "s3", "s7"]
    assert "1.2.1" in archive.finds[-1]["Query"]["StudyInstanceUID"]  # asked for, then refused


@pytest.mark.parametrize("key", ["StudyInstanceUID", "0020,000d", "0020,000D", "studyinstanceuid"])
def test_a_query_naming_the_uid_itself_is_not_narrowed(archive: LoggedArchive, key: str) -> None:
    indexed, scanning = _listers(archive)
    query = {key: "1.2.4"}
    body = json.dumps({"Level": "Study", "Query": query})
    assert ids(indexed.find(body, CARDIO)) == ids(scanning.find(body, CARDIO))
    assert archive.finds[-1]["Query"] == query  # the user's query as given, not combined with a list


def test_no_covered_study_answers_empty_without_asking_the_core(archive: LoggedArchive) -> None:
    indexed, _ = _listers(archive)
    nobody = grants((["view"], ["Oncology"]))
    assert _find(indexed, "Study", nobody) == []
    assert archive.finds == []


def test_unrestricted_and_patient_level_are_not_narrowed(archive: LoggedArchive) -> None:
    indexed, _ = _listers(archive)
    assert _find(indexed, "Study", EVERYWHERE) == list(archive.studies)
    assert _find(indexed, "Patient", CARDIO) == ["p-mix", "p3", "p7"]
    assert all("StudyInstanceUID" not in f.get("Query", {}) for f in archive.finds)


def test_too_many_covered_studies_or_too_big_an_archive_falls_back_to_scanning(
        archive: LoggedArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = StudyResolver(archive.get, archive.post)
    index = StudyIndex(archive.get, resolver, max_studies=5, background=False)
    small = Lister(archive.get, archive.post, resolver, index=index)
    assert _find(small, "Study") == ["s0", "s3", "s7"]
    assert all("StudyInstanceUID" not in f["Query"] for f in archive.finds)
    monkeypatch.setattr(listing, "FIND_UID_FILTER_MAX", 2)
    indexed, _ = _listers(archive)
    assert _find(indexed, "Study", Limit=2) == ["s0", "s3"]
    assert all("StudyInstanceUID" not in f["Query"] for f in archive.finds)


def test_a_failing_lookup_means_no_index_not_a_partial_one(archive: LoggedArchive) -> None:
    resolver = StudyResolver(archive.get, archive.post)
    index = StudyIndex(archive.get, resolver, background=False)
    original = archive.get

    def flaky(uri: str) -> Any:
        if uri == "/studies/s7/instances":
            raise RuntimeError("Orthanc busy")
        return original(uri)

    index.rest_get = flaky
    resolver.rest_get = flaky
    assert index.current() is None
    indexed = Lister(archive.get, archive.post, StudyResolver(archive.get, archive.post), index=index)
    index.rest_get = archive.get
    resolver.rest_get = archive.get
    assert _find(indexed, "Study") == ["s0", "s3", "s7"]


def test_departments_of_the_fixture() -> None:
    assert DEPTS.count("Cardio") == 3


def test_the_index_builds_in_the_background_and_the_first_query_scans(archive: LoggedArchive) -> None:
    import time

    resolver = StudyResolver(archive.get, archive.post)
    index = StudyIndex(archive.get, resolver)
    indexed = Lister(archive.get, archive.post, resolver, index=index)
    assert _find(indexed, "Study", Limit=2) == ["s0", "s3"]  # answered by scanning
    assert all("StudyInstanceUID" not in f["Query"] for f in archive.finds)
    deadline = time.monotonic() + 5
    while index.builds == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert index.builds == 1
    assert _find(indexed, "Study", Limit=2) == ["s0", "s3"]
    assert "StudyInstanceUID" in archive.finds[-1]["Query"]
