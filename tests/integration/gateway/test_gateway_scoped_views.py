"""Per-role grants through the gateway in a real Chromium (issue 11, "Tests"), logged in at Keycloak
with password + TOTP, the grants read from the demo directory's assignments:

* ``card.liam`` (cardiologist: view + download, Cardiology only) sees only the Cardiology study in
  Orthanc Explorer's study list, in ``/studies``, ``/patients``, ``/tools/find`` and QIDO, while the
  Orthanc holds three studies of other departments beside it, and opening one of those is refused;
* ``card.ines`` (clinician: view everywhere, and cardiologist) sees all four listed but downloads only
  the Cardiology one (archive, instance file, WADO-RS: 200 there, 403 elsewhere).

Every request is the page's own (``fetch`` with the session cookie): the gateway adds the PACS token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gw_browser_helpers import IN_SCOPE, OUT_OF_SCOPE, Stack, log_in, page_fetch

from bridge.http import pinned_session
from pacs_devstack import browser

pytestmark = pytest.mark.integration

STUDY_UID = "0020000D"


def _find(tag: str, **extra: object) -> str:
    return json.dumps({"Level": "Study", "Query": {"PatientName": tag + "*"}, **extra})


def _qido_uids(b: browser.Browser, gateway: str, tag: str) -> set[str]:
    status, text = page_fetch(b, "GET", f"{gateway}/dicom-web/studies?PatientName={tag}*")
    assert status == 200, (status, text[:300])
    return {s[STUDY_UID]["Value"][0] for s in json.loads(text)}


def _explorer_study_list(b: browser.Browser, gateway: str, tag: str) -> str:
    """The text of Orthanc Explorer's "All studies" page once it holds the tagged studies."""
    b.go(gateway + "/app/explorer.html#find-studies")
    text = "return (document.getElementById('all-studies') || {innerText: ''}).innerText;"
    assert b.wait_for(lambda: tag in (b.execute(text) or ""), timeout=30), b.source()[:1500]
    return str(b.execute(text))


def test_more_studies_are_outside_cardiology_than_inside(gw_stack: Stack,
                                                         department_studies: dict[str, dict[str, str]]) -> None:
    """The setting of the scoped tests: an unscoped radiologist finds all four tagged studies in the
    Orthanc the gateway fronts, three of them outside Cardiology."""
    tag = department_studies[IN_SCOPE]["tag"]
    http = pinned_session(gw_stack.info["ca"]["file"])
    r = http.post(gw_stack.orthanc + "/tools/find", data=_find(tag), timeout=30,
                  headers={"Authorization": f"Bearer {gw_stack.pacs_token('rad.alice')}"})
    assert r.status_code == 200, r.text[:300]
    assert set(r.json()) == {s["study_id"] for s in department_studies.values()}
    assert len(OUT_OF_SCOPE) > 1


def test_cardiology_only_user_sees_only_cardiology_everywhere(
    gw_stack: Stack, department_studies: dict[str, dict[str, str]], tmp_path: Path,
) -> None:
    browser.ensure_installed()
    own = department_studies[IN_SCOPE]
    others = [department_studies[d] for d in OUT_OF_SCOPE]
    tag = own["tag"]
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        gateway = log_in(b, gw_stack.gateway, "card.liam")

        listed = _explorer_study_list(b, gateway, tag)
        assert listed.count(tag) == 1 and "CARDIOLOGY" in listed, listed
        assert re.search(tag + r"[ ^]CARDIOLOGY", listed), listed

        status, text = page_fetch(b, "GET", gateway + "/studies")
        assert status == 200, text[:300]
        ids = set(json.loads(text))
        assert own["study_id"] in ids and not ids & {s["study_id"] for s in others}
        status, text = page_fetch(b, "GET", gateway + "/patients")
        assert status == 200, text[:300]
        ids = set(json.loads(text))
        assert own["patient"] in ids and not ids & {s["patient"] for s in others}

        for body in (_find(tag), _find(tag, Expand=True), _find(tag, Limit=10, Since=0)):
            status, text = page_fetch(b, "POST", gateway + "/tools/find", body)
            assert status == 200, (body, status, text[:300])
            found = [s if isinstance(s, str) else s["ID"] for s in json.loads(text)]
            assert found == [own["study_id"]], (body, found)

        assert _qido_uids(b, gateway, tag) == {own["study_uid"]}

        # other spellings and levels of the same listings
        status, text = page_fetch(b, "GET", gateway + "/studies?expand")
        assert status == 200, text[:300]
        ids = {s["ID"] for s in json.loads(text)}
        assert own["study_id"] in ids and not ids & {s["study_id"] for s in others}
        for level, parent, expected in (("series", "ParentStudy", own["study_id"]),
                                        ("Instance", "ParentSeries", own["series"])):
            status, text = page_fetch(b, "POST", gateway + "/tools/find",
                                      json.dumps({"Level": level, "Query": {"PatientName": tag + "*"}, "Expand": True}))
            assert status == 200, (level, status, text[:300])
            assert [r[parent] for r in json.loads(text)] == [expected], (level, text[:500])
        for level in ("series", "instances"):
            status, text = page_fetch(b, "GET", f"{gateway}/dicom-web/{level}?PatientName={tag}*")
            assert status == 200, (level, status, text[:300])
            assert {r[STUDY_UID]["Value"][0] for r in json.loads(text)} == {own["study_uid"]}, level

        # another route to an out-of-scope study: refused, not listed-then-open
        for other in others:
            for path in (f"/studies/{other['study_id']}", f"/patients/{other['patient']}",
                         f"/dicom-web/studies/{other['study_uid']}/metadata"):
                status, _ = page_fetch(b, "GET", gateway + path)
                assert status == 403, (path, status)
        status, _ = page_fetch(b, "GET", f"{gateway}/studies/{own['study_id']}")
        assert status == 200


def test_clinician_cardiologist_lists_everything_but_downloads_only_cardiology(
    gw_stack: Stack, department_studies: dict[str, dict[str, str]], tmp_path: Path,
) -> None:
    browser.ensure_installed()
    tag = department_studies[IN_SCOPE]["tag"]
    everything = {s["study_id"] for s in department_studies.values()}
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        gateway = log_in(b, gw_stack.gateway, "card.ines")

        listed = _explorer_study_list(b, gateway, tag)
        assert listed.count(tag) == len(department_studies), listed
        status, text = page_fetch(b, "GET", gateway + "/studies")
        assert status == 200 and everything <= set(json.loads(text)), (status, text[:300])
        status, text = page_fetch(b, "POST", gateway + "/tools/find", _find(tag))
        assert status == 200 and set(json.loads(text)) == everything, (status, text[:300])
        assert _qido_uids(b, gateway, tag) == {s["study_uid"] for s in department_studies.values()}

        for department, study in department_studies.items():
            expected = 200 if department == IN_SCOPE else 403
            status, _ = page_fetch(b, "GET", f"{gateway}/studies/{study['study_id']}")
            assert status == 200, (department, "view", status)  # clinician: view everywhere
            for path in (f"/studies/{study['study_id']}/archive", f"/studies/{study['study_id']}/media",
                         f"/series/{study['series']}/archive", f"/instances/{study['instance']}/file",
                         f"/dicom-web/studies/{study['study_uid']}"):
                status, _ = page_fetch(b, "GET", gateway + path)
                assert status == expected, (department, path, status)
