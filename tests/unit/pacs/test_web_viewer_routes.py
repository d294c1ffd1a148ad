"""The Orthanc Web Viewer 2.8 behind the bridge: its routes in the route table, its data routes
resolved to their study (series id; the image id ``<compression>-<instance id>_<frame>``), its
static files open to any grant holding view, and the ways around that tried.

What the plugin serves was read from the Debian package (``strings`` of libOrthancWebViewer.so.2.8:
it registers ``/web-viewer/{app,libs,series,is-stable-series,instances}/(.*)`` and parses image ids
with ``^([a-z0-9]+)-([a-z0-9-]+)_([0-9]+)$``) and checked against the running plugin
(tests/integration/viewer/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.core import routes
from bridge.core.verifier import decide
from bridge.deploy.orthanc_config import DicomTls
from bridge.pacs.gate import judge
from bridge.pacs.scopes import StudyInfo, Target, targets_of

#: Orthanc's TLS files (required arguments of orthanc_config; the paths are not read)
TLS = {"https_certificate": Path("/etc/o/https.pem"),
       "dicom_tls": DicomTls(Path("/etc/o/dicom.pem"), Path("/etc/o/dicom-key.pem"), Path("/etc/o/modality-ca.pem"))}


RAD = StudyInfo("aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa", "1.2.1", "P-1", "Radiology", "Hospital")
CARD = StudyInfo("cccccccc-cccccccc-cccccccc-cccccccc-cccccccc", "1.2.2", "P-2", "Cardiology", "Hospital")
RAD_SERIES = "33a5389e-a7920ad0-4544ecfd-2bba1ade-459628ad"
CARD_SERIES = "22222222-22222222-22222222-22222222-22222222"
RAD_INSTANCE = "a8798ea9-793ff2a9-80ef7a33-5ba2f936-fdc00310"
CARD_INSTANCE = "44444444-44444444-44444444-44444444-44444444"
SERIES = {RAD_SERIES: RAD, CARD_SERIES: CARD}
INSTANCES = {RAD_INSTANCE: RAD, CARD_INSTANCE: CARD}


def studies_of(target: Target) -> list[StudyInfo]:
    """Orthanc's answer per level: an id of another level is unknown there (as Orthanc answers 404)."""
    table = {"series": SERIES, "instances": INSTANCES}.get(target.level, {})
    return [table[target.key]] if target.key in table else []


def claims(permissions: list[str], departments: list[str] | None = None) -> dict[str, Any]:
    """A token's claims in both shapes a verifier reads: the format-1 ``scopes`` and the format-2
    ``grants`` claim (one role grant).  The one place to adapt when the token format changes."""
    scope = {"departments": departments} if departments else {}
    out: dict[str, Any] = {"permissions": permissions,
                           "grants": [{"kind": "role", "role": "test", "permissions": permissions, "scope": scope}]}
    if departments:
        out["scopes"] = {"departments": departments}
    return out


VIEWER = claims(["view"])
SCOPED = claims(["view", "download"], ["Radiology"])
NO_VIEW = claims(["upload", "download"])


def image(instance: str, compression: str = "jpeg95", frame: str = "0") -> str:
    return f"/web-viewer/instances/{compression}-{instance}_{frame}"


# ------------------------------------------------------------------ the route table

VIEWER_PATHS = [
    "/web-viewer/app/viewer.html", "/web-viewer/app/viewer.js", "/web-viewer/app/images/orthanc-logo.png",
    "/web-viewer/libs/jquery.js", "/web-viewer/libs/cornerstone.min.js",
    f"/web-viewer/series/{RAD_SERIES}", f"/web-viewer/is-stable-series/{RAD_SERIES}", image(RAD_INSTANCE),
    image(RAD_INSTANCE, "deflate"), image(RAD_INSTANCE, "jpeg80"),
]


@pytest.mark.parametrize("path", VIEWER_PATHS)
def test_every_viewer_route_needs_view(path: str) -> None:
    assert decide(VIEWER, "GET", path).allow
    assert decide(VIEWER, "HEAD", path).allow
    refused = decide(NO_VIEW, "GET", path)
    assert not refused.allow and refused.permission == "view"


@pytest.mark.parametrize("path", [
    "/web-viewer", "/web-viewer/", "/web-viewer/app", "/web-viewer/series", "/web-viewer/series/",
    f"/web-viewer/series/{RAD_SERIES}/x", f"/web-viewer/series/{RAD_SERIES}/instances",
    f"/web-viewer/is-stable-series/{RAD_SERIES}/x", image(RAD_INSTANCE) + "/file",
    "/web-viewer/instances", "/web-viewer/cache/x", "/web-viewer/plugin.js", "/web-viewer/app/../series/x",
])
def test_paths_the_plugin_does_not_serve_match_no_rule(path: str) -> None:
    """Only the five registered routes: a path below /web-viewer that no handler serves is denied,
    whatever the token holds (a newer viewer's routes stay closed until someone reads them)."""
    assert routes.route_for("GET", path) is None
    assert not decide(claims(["view", "download", "admin", "settings"]), "GET", path).allow


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_viewer_routes_are_read_only(method: str) -> None:
    for path in VIEWER_PATHS:
        assert routes.route_for(method, path) is None


# ------------------------------------------------------------------ what a request names


@pytest.mark.parametrize("path, target", [
    (f"/web-viewer/series/{RAD_SERIES}", Target("series", RAD_SERIES)),
    (f"/web-viewer/series/{RAD_SERIES}/", Target("series", RAD_SERIES)),  # Orthanc drops it (checked)
    (f"/web-viewer/is-stable-series/{RAD_SERIES}", Target("series", RAD_SERIES)),
    (f"/web-viewer/series/{RAD_SERIES}?series=x", Target("series", RAD_SERIES)),
    (image(RAD_INSTANCE), Target("instances", RAD_INSTANCE)),
    (image(RAD_INSTANCE) + "/", Target("instances", RAD_INSTANCE)),
    (image(RAD_INSTANCE, "deflate"), Target("instances", RAD_INSTANCE)),
    (image(RAD_INSTANCE, "jpeg80"), Target("instances", RAD_INSTANCE)),
    (image(RAD_INSTANCE, "jpeg095"), Target("instances", RAD_INSTANCE)),  # the plugin reads 95
    (image(RAD_INSTANCE, "jpeg100", "12"), Target("instances", RAD_INSTANCE)),
])
def test_data_routes_name_their_resource(path: str, target: Target) -> None:
    named = targets_of(path)
    assert named.problem is None and named.targets == (target,)


@pytest.mark.parametrize("path", [
    image(RAD_INSTANCE, "JPEG95"), image(RAD_INSTANCE, "Jpeg95"), image(RAD_INSTANCE, "jpeg"),
    image(RAD_INSTANCE, "jpeg-95"), image(RAD_INSTANCE, "png95"), image(RAD_INSTANCE, "jpeg95 "),
    image(RAD_INSTANCE, "jpeg%39%35"), image(RAD_INSTANCE, "%6apeg95"), image(RAD_INSTANCE, "jpeg+95"),
    image(RAD_INSTANCE, "raw"), image(RAD_INSTANCE, ""),
    image(RAD_INSTANCE, frame=""), image(RAD_INSTANCE, frame="-1"), image(RAD_INSTANCE, frame="0x1"),
    image(RAD_INSTANCE, frame="0_0"), f"/web-viewer/instances/jpeg95-{RAD_INSTANCE}",
    f"/web-viewer/instances/{RAD_INSTANCE}_0", f"/web-viewer/instances/{RAD_INSTANCE}",
    image(RAD_INSTANCE.upper()), image(RAD_INSTANCE[:-1]), image(RAD_INSTANCE + "0"),
    image(RAD_INSTANCE.replace("-", "%2d", 1)), image(RAD_INSTANCE.replace("7", "%37", 1)),
    # an out-of-scope id inside an in-scope-looking wrapper
    image(f"{RAD_INSTANCE}-{CARD_INSTANCE}"), image(f"{CARD_INSTANCE}_0-jpeg95-{RAD_INSTANCE}"),
    f"/web-viewer/instances/jpeg95-{RAD_INSTANCE}_0-{CARD_INSTANCE}_0",
    f"/web-viewer/series/{RAD_SERIES.upper()}", f"/web-viewer/series/{RAD_SERIES}-{CARD_SERIES}",
    f"/web-viewer/series/%3{RAD_SERIES[1:]}", "/web-viewer/series/", f"/web-viewer/series/{RAD_SERIES}//",
    f"/web-viewer/is-stable-series/{RAD_SERIES} ",
])
def test_odd_spellings_cannot_be_judged(path: str) -> None:
    """Anything but the exact shape the plugin parses (and Orthanc's own id shape) names no resource
    this module can vouch for: a scoped token is refused, never judged on a guess.  (Orthanc decodes
    ``%xx`` before its filter sees the path, so encoded forms reach this only from a caller that hands
    it a raw path; they are refused there.)"""
    named = targets_of(path)
    assert named.problem is not None and not named.targets and not named.static


@pytest.mark.parametrize("path", [
    "/web-viewer/app/viewer.html", "/web-viewer/libs/jquery.js", "/web-viewer/app/images/orthanc-logo.png",
    "/app/explorer.html", "/app/libs/jquery.min.js", "/plugins/explorer.js",
])
def test_static_files_name_no_study(path: str) -> None:
    named = targets_of(path)
    assert named.static and not named.targets and named.problem is None


@pytest.mark.parametrize("path", [
    "/web-viewer/application/x", "/web-viewer/appx/viewer.html", "/web-viewer/app", "/web-viewerx/app/x",
    "/apps/x", "/plugins/explorer.jsx", f"/web-viewer/series/{RAD_SERIES}", "/studies",
])
def test_only_the_static_folders_are_static(path: str) -> None:
    assert not targets_of(path).static


# ------------------------------------------------------------------ the decision


@pytest.mark.parametrize("path, ok", [
    (f"/web-viewer/series/{RAD_SERIES}", True),
    (f"/web-viewer/series/{CARD_SERIES}", False),
    (f"/web-viewer/series/{RAD_SERIES}/", True),
    (f"/web-viewer/series/{CARD_SERIES}/", False),
    (f"/web-viewer/is-stable-series/{RAD_SERIES}", True),
    (f"/web-viewer/is-stable-series/{CARD_SERIES}", False),
    (image(RAD_INSTANCE), True),
    (image(CARD_INSTANCE), False),
    (image(RAD_INSTANCE, "deflate"), True),
    (image(CARD_INSTANCE, "deflate"), False),
    (image(CARD_INSTANCE, "jpeg095"), False),
    (image(CARD_INSTANCE, "JPEG95"), False),
    (image(CARD_INSTANCE) + "/", False),
    # an id of another level: Orthanc knows no series/instance by it, so neither does the scope check
    (f"/web-viewer/series/{RAD_INSTANCE}", False),
    (f"/web-viewer/series/{RAD.orthanc_id}", False),
    (image(RAD_SERIES), False),
    (image(RAD.orthanc_id), False),
    (image(f"{RAD_INSTANCE}-{CARD_INSTANCE}"), False),
    ("/web-viewer/app/viewer.html", True),
    ("/web-viewer/libs/cornerstone.min.js", True),
    ("/app/explorer.html", True),
])
def test_scoped_viewer(path: str, ok: bool) -> None:
    verdict = judge(SCOPED, "GET", path, None, studies_of)
    assert verdict.allow is ok, verdict.reason


def test_unscoped_viewer_opens_any_study() -> None:
    for path in (f"/web-viewer/series/{CARD_SERIES}", image(CARD_INSTANCE), "/web-viewer/app/viewer.html"):
        assert judge(VIEWER, "GET", path, None, studies_of).allow


def test_no_view_no_viewer() -> None:
    scoped_upload = claims(["upload", "download"], ["Radiology"])
    for path in ("/web-viewer/app/viewer.html", f"/web-viewer/series/{RAD_SERIES}", image(RAD_INSTANCE)):
        for token in (NO_VIEW, scoped_upload):
            verdict = judge(token, "GET", path, None, studies_of)
            assert not verdict.allow and verdict.permission == "view", verdict.reason


def test_the_viewers_download_button_is_download() -> None:
    """viewer.js's only core route: ``../../instances/{id}/file`` (its download button)."""
    assert not judge(claims(["view"], ["Radiology"]), "GET", f"/instances/{RAD_INSTANCE}/file", None,
                     studies_of).allow
    assert decide(SCOPED, "GET", f"/instances/{RAD_INSTANCE}/file").permission == "download"


# ------------------------------------------------------------------ Orthanc's configuration


def test_generated_config_loads_the_viewer_with_a_private_cache(tmp_path: Path) -> None:
    from bridge.deploy.orthanc_config import WEB_VIEWER_PLUGIN, orthanc_config

    cfg = orthanc_config(name="t", aet="T", http_port=1, dicom_port=2, **TLS, storage_dir=tmp_path / "s",
                         index_dir=tmp_path / "i", python_script=tmp_path / "entry.py")
    assert str(WEB_VIEWER_PLUGIN) in cfg["Plugins"]
    # decoded images are patient data: never the package's default /tmp/OrthancWebViewerCache
    assert cfg["WebViewer"]["CachePath"] == str(tmp_path / "s" / "WebViewerCache")
    own = orthanc_config(name="t", aet="T", http_port=1, dicom_port=2, **TLS, storage_dir=tmp_path / "s",
                         index_dir=tmp_path / "i", python_script=tmp_path / "entry.py",
                         web_viewer_cache_dir=tmp_path / "cache")
    assert own["WebViewer"]["CachePath"] == str(tmp_path / "cache")
    off = orthanc_config(name="t", aet="T", http_port=1, dicom_port=2, **TLS, storage_dir=tmp_path / "s",
                         index_dir=tmp_path / "i", python_script=tmp_path / "entry.py", web_viewer=False)
    assert str(WEB_VIEWER_PLUGIN) not in off["Plugins"] and "WebViewer" not in off


def test_deploy_command_puts_the_cache_in_the_data_dir(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from bridge.deploy.cli import orthanc_config_cli

    result = CliRunner().invoke(orthanc_config_cli, ["--out", str(tmp_path / "out"), "--bundle", "/b",
                                                     "--data-dir", str(tmp_path / "data"),
                                                     "--https-certificate", "/h.pem", "--dicom-tls-certificate",
                                                     "/d.pem", "--dicom-tls-key", "/k.pem", "--modality-ca", "/m.pem"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "out" / "orthanc.json").read_text())
    assert cfg["WebViewer"]["CachePath"] == str(tmp_path / "data" / "webviewer-cache")


def test_devstack_installs_the_viewer() -> None:
    from pacs_devstack.orthanc import OrthancService

    assert "orthanc-webviewer" in OrthancService.apt_packages
