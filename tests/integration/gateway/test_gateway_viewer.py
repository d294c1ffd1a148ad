"""The Orthanc Web Viewer through the gateway in a real Chromium, logged in at Keycloak with password
+ TOTP (issue 11, "Tests"): a radiologist finds a study in Orthanc Explorer and the viewer renders
its image; a Cardiology-only cardiologist's viewer renders a Cardiology series and is refused a
Radiology one (every viewer request goes through the gateway with the session cookie only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gw_browser_helpers import IN_SCOPE, Stack, log_in

from pacs_devstack import browser
from tests.integration.pacs.test_web_viewer_chromium import (
    CANVAS_COLOURS,
    VIEWER_REQUESTS,
    viewer_renders_own_series_only,
)

pytestmark = pytest.mark.integration


def test_radiologist_finds_a_study_and_the_web_viewer_renders_it(
    gw_stack: Stack, department_studies: dict[str, dict[str, str]], tmp_path: Path,
) -> None:
    browser.ensure_installed()
    study = department_studies["Radiology"]
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        gateway = log_in(b, gw_stack.gateway, "rad.alice")
        # the explorer's study page names the series the viewer opens
        b.go(gateway + f"/app/explorer.html#study?uuid={study['study_id']}")
        assert b.wait_for(lambda: study["study_uid"] in b.source(), timeout=30), b.source()[:1500]
        b.go(gateway + f"/web-viewer/app/viewer.html?series={study['series']}")
        assert b.url().startswith(gateway)
        assert b.wait_for(lambda: (b.execute(CANVAS_COLOURS) or -1) > 1, timeout=30), \
            f"the canvas stayed blank: {b.execute(CANVAS_COLOURS)} colour(s)"
        asked = b.execute(VIEWER_REQUESTS)
        assert all(url.startswith(gateway + "/web-viewer/") for url, _ in asked), asked
        assert any("/web-viewer/series/" + study["series"] in url for url, _ in asked), asked
        assert any("/web-viewer/instances/jpeg95-" + study["instance"] + "_0" in url for url, _ in asked), asked
        assert all(status == 200 for _, status in asked), asked


def test_cardiologist_views_a_cardiology_series_and_is_refused_a_radiology_one(
    gw_stack: Stack, department_studies: dict[str, dict[str, str]], tmp_path: Path,
) -> None:
    browser.ensure_installed()
    with browser.chromium(gw_stack.certs(), tmp_path / "profile") as b:
        gateway = log_in(b, gw_stack.gateway, "card.liam")
        viewer_renders_own_series_only(b, gateway, department_studies[IN_SCOPE], department_studies["Radiology"])
