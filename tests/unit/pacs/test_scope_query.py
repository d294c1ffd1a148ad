"""Which studies a request names, read the way Orthanc 1.10.1 + DICOMweb 1.7 read it (facts checked on the
real servers).  `query` is what Orthanc hands the filter: not percent-decoded, last value per key."""

from __future__ import annotations

import pytest

from bridge.pacs.scopes import NOTHING, Named, Target, study_uids_of_query, targets_of

A, B = "1.2.826.0.1.3680043.10.1137.1", "1.2.826.0.1.3680043.10.1137.2"


def study(*uids: str) -> Named:
    return Named(tuple(Target("study-uid", u) for u in uids))


@pytest.mark.parametrize("key", ["StudyInstanceUID", "0020000D", "0020000d"])
def test_spellings_the_plugin_applies_name_the_study(key: str) -> None:
    assert targets_of("/dicom-web/studies", {key: A}) == study(A)


@pytest.mark.parametrize("key", [
    "studyinstanceuid", "STUDYINSTANCEUID", "StudyInstanceUid", "StudiesInstanceUID", "0020,000D", "0020,000d",
    "(0020,000D)", "0x0020000D", "20000D", " StudyInstanceUID", "StudyInstanceUID ", "%30020000D",
    "0020%2C000D", "StudyInstanceUIDs",
])
def test_spellings_the_plugin_ignores_are_refused(key: str) -> None:
    """Ignored by the plugin means the answer lists every study: never "names one study"."""
    named = targets_of("/dicom-web/studies", {key: A})
    assert named.problem and not named.targets, key


@pytest.mark.parametrize("extra", ["0020000D", "0020000d", "0020,000D", "studyinstanceuid"])
def test_two_spellings_of_the_tag_are_ambiguous(extra: str) -> None:
    # ?StudyInstanceUID=A&0020000D=B: the plugin keeps the last one, which a dict cannot tell
    named = targets_of("/dicom-web/studies", {"StudyInstanceUID": A, extra: B})
    assert "ambiguous" in (named.problem or "")


def test_repeated_key_is_judged_on_its_last_value_like_the_plugin() -> None:
    # Orthanc collapses ?StudyInstanceUID=A&StudyInstanceUID=B to {"StudyInstanceUID": "B"} for the
    # filter, and the DICOMweb plugin applies B as well
    assert targets_of("/dicom-web/studies", {"StudyInstanceUID": B}) == study(B)


@pytest.mark.parametrize("value, want", [
    (f"{A}\\{B}", (A, B)), (f"{A},{B}", (A, B)), (f"{A},{A}", (A,)),
])
def test_uid_lists_name_every_study(value: str, want: tuple[str, ...]) -> None:
    assert study_uids_of_query({"StudyInstanceUID": value}) == study(*want)


@pytest.mark.parametrize("value", [
    "", "*", "1.2.*", "1.2.?",
    f"{A}%2C{B}", f"{A}%5C{B}", "1.2.%33", f"{A}\\", f"\\{A}", f"{A},", f"{A}-{B}", f"+{A}", f" {A}", f"{A} ", "1.2.3a",
    "1..2", ".1.2", "1" * 65, f"{A}\\*",
])
def test_empty_wildcards_and_non_uids_are_refused(value: str) -> None:
    named = study_uids_of_query({"StudyInstanceUID": value})
    assert named.problem and not named.targets, value


def test_other_parameters_do_not_matter() -> None:
    q = {"StudyInstanceUID": A, "includefield": "0020000D", "limit": "10", "offset": "0", "fuzzymatching": "true",
         "PatientID": "P-2", "00100020": "x"}
    assert targets_of("/dicom-web/studies", q) == study(A)
    assert targets_of("/dicom-web/studies", {"includefield": "StudyInstanceUID"}) == NOTHING


@pytest.mark.parametrize("root", ["/dicom-web/studies", "/dicom-web/studies/", "/dicom-web/series",
                                  "/dicom-web/instances", "/dicom-web/series/"])
def test_every_qido_root_is_read_the_same_way(root: str) -> None:
    assert targets_of(root, {"0020000D": B}) == study(B)
    assert targets_of(root, {"StudyInstanceUID": A, "0020000D": B}).problem
    assert targets_of(root, {}) == NOTHING  # a query across studies


def test_path_study_and_query_study_must_agree() -> None:
    assert targets_of(f"/dicom-web/studies/{A}/series", {}) == study(A)
    assert targets_of(f"/dicom-web/studies/{A}/series", {"0020000D": A}) == study(A)
    for q in ({"0020000D": B}, {"StudyInstanceUID": B}, {"StudyInstanceUID": A, "0020000d": A},
              {"studyinstanceuid": A}):
        assert targets_of(f"/dicom-web/studies/{A}/instances", q).problem, q
    assert targets_of(f"/dicom-web/studies/{A}/series/{A}.1/metadata", {}) == study(A)


def test_wado_uri_is_judged_on_the_object() -> None:
    q = {"requestType": "WADO", "studyUID": A, "seriesUID": A + ".1", "objectUID": B + ".1.1"}
    assert targets_of("/wado", q) == Named((Target("instance-uid", B + ".1.1"),))
    assert targets_of("/wado", {"requestType": "WADO", "studyUID": A}) == NOTHING
    for bad in ({"objectuid": A}, {"objectUID": A, "ObjectUID": B}, {"objectUID": "1.*"}, {"objectUID": ""},
                {"objectUID": A, "studyuid": B}):
        named = targets_of("/wado", bad)
        assert named.problem or not named.targets, bad


def test_orthanc_resources_ignore_the_query() -> None:
    assert targets_of("/studies/abc/archive", {"StudyInstanceUID": B}) == Named((Target("studies", "abc"),))
    assert targets_of("/studies", {"0020000D": A}) == NOTHING
    assert targets_of("/tools/find", None) == NOTHING
