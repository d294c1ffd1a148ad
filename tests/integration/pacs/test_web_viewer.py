"""The Orthanc Web Viewer 2.8 (Debian orthanc-webviewer) on the real Orthanc with the bridge plugin.

The viewer page asks ``../series/{id}`` for the slices (``<instance id>_<frame>``), then
``../instances/<compression>-<slice>`` for each image (``jpeg95`` by default; ``jpeg80``/``deflate`` from
its quality buttons) and ``../is-stable-series/{id}``; its download button is the core's
``/instances/{id}/file``.  A Radiology-scoped token opens a Radiology study and is refused a
Cardiology one on every one of those routes, however the id is spelled.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from bridge.core.permissions import Permission as P
from pacs_devstack.orthanc import connection
from tests.integration.pacs.scoped_tokens import scoped_token
from tests.integration.pacs.viewer_studies import IN, OUT, store_studies

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def studies(pacs: Any) -> dict[str, dict[str, str]]:
    """IN (Radiology) and OUT (Cardiology): this module's own studies."""
    return store_studies(pacs, "web-viewer")


@pytest.fixture(scope="module")
def rad(pacs: Any) -> str:
    """A Radiology-scoped viewer (with download: the viewer's download button)."""
    return scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD], departments=["Radiology"])


@pytest.fixture(scope="module")
def everywhere(pacs: Any) -> str:
    return scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD])


@pytest.fixture(scope="module")
def no_view(pacs: Any) -> str:
    return scoped_token(pacs.bridge, [P.UPLOAD, P.DOWNLOAD, P.SETTINGS])


def raw(pacs: Any, path: str, token: str | None, method: str = "GET") -> tuple[int, bytes]:
    """``path`` sent byte for byte (requests would re-encode or normalise it): (status, body)."""
    parts = urlsplit(pacs.url)
    conn = connection(parts.port, timeout=30)  # HTTPS, verified against the stack CA
    conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
    answer = conn.getresponse()
    status, body = answer.status, answer.read()
    conn.close()
    return status, body


def image(instance: str, compression: str = "jpeg95", frame: int = 0) -> str:
    return f"/web-viewer/instances/{compression}-{instance}_{frame}"


def decoded_pixels(answer: dict[str, Any]) -> list[int]:
    """The pixel values of a web viewer image answer, decoded as its JavaScript decodes them."""
    meta = answer["Orthanc"]
    data = base64.b64decode(meta["PixelData"])
    if meta["Compression"] == "Jpeg":
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.size == (answer["columns"], answer["rows"])
        return list(img.tobytes())
    assert meta["Compression"] == "Deflate"
    plain = zlib.decompress(data)
    assert len(plain) == answer["sizeInBytes"] == answer["rows"] * answer["columns"] * 2
    return [int.from_bytes(plain[i:i + 2], "little") for i in range(0, len(plain), 2)]


# ------------------------------------------------------------------ the application


def test_viewer_app_and_everything_it_loads(pacs: Any, rad: str, everywhere: str) -> None:
    for token in (rad, everywhere):
        page = pacs.get("/web-viewer/app/viewer.html", token)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"#:]+\.(?:js|css|png))"', page.text)
        assert any(a.endswith("viewer.js") for a in assets) and any("cornerstone" in a for a in assets)
        for asset in assets:
            path = "/web-viewer/" + asset.removeprefix("../") if asset.startswith("../") \
                else "/web-viewer/app/" + asset
            assert pacs.get(path, token).status_code == 200, path


def test_viewer_app_needs_a_token_with_view(pacs: Any, no_view: str) -> None:
    for path in ("/web-viewer/app/viewer.html", "/web-viewer/app/viewer.js", "/web-viewer/libs/jquery.js"):
        assert pacs.get(path).status_code == 403
        assert pacs.get(path, no_view).status_code == 403


# ------------------------------------------------------------------ an in-scope study renders


def test_in_scope_series_renders(pacs: Any, studies: dict[str, dict[str, str]], rad: str) -> None:
    own = studies[IN]
    volume = pacs.get(f"/web-viewer/series/{own['series']}", rad)
    assert volume.status_code == 200
    body = volume.json()
    assert body["PatientID"] == own["patient_id"] and body["Slices"] == [own["instance"] + "_0"]
    stable = pacs.get(f"/web-viewer/is-stable-series/{own['series']}", rad)
    assert stable.status_code == 200 and isinstance(stable.json(), bool)
    for compression in ("jpeg95", "jpeg80", "deflate"):
        answer = pacs.get(f"/web-viewer/instances/{compression}-{body['Slices'][0]}", rad)
        assert answer.status_code == 200, compression
        pixels = decoded_pixels(answer.json())
        assert len(pixels) == 64 and max(pixels) > min(pixels), f"{compression}: a blank image"
    # the stored pixel data is 0..127 as little-endian 16-bit words: the lossless answer is exact
    lossless = decoded_pixels(pacs.get(image(own["instance"], "deflate"), rad).json())
    assert lossless == [int.from_bytes(bytes([2 * i, 2 * i + 1]), "little") for i in range(64)]


def test_download_button_needs_download(pacs: Any, studies: dict[str, dict[str, str]], rad: str) -> None:
    """viewer.js's download button asks the core for ``/instances/{id}/file``."""
    path = f"/instances/{studies[IN]['instance']}/file"
    assert pacs.get(path, rad).status_code == 200
    view_only = scoped_token(pacs.bridge, [P.VIEW], departments=["Radiology"])
    assert pacs.get(path, view_only).status_code == 403
    assert pacs.get(f"/instances/{studies[OUT]['instance']}/file", rad).status_code == 403


# ------------------------------------------------------------------ an out-of-scope study does not


def out_of_scope_paths(studies: dict[str, dict[str, str]]) -> list[str]:
    other = studies[OUT]
    return [f"/web-viewer/series/{other['series']}", f"/web-viewer/is-stable-series/{other['series']}",
            image(other["instance"]), image(other["instance"], "jpeg80"), image(other["instance"], "deflate")]


def test_out_of_scope_study_is_refused(pacs: Any, studies: dict[str, dict[str, str]], rad: str,
                                       everywhere: str) -> None:
    for path in out_of_scope_paths(studies):
        assert pacs.get(path, rad).status_code == 403, path
        assert pacs.get(path, everywhere).status_code == 200, path  # the scope is the only difference


def test_no_view_no_images(pacs: Any, studies: dict[str, dict[str, str]], no_view: str) -> None:
    own = studies[IN]
    scoped_no_view = scoped_token(pacs.bridge, [P.UPLOAD, P.DOWNLOAD], departments=["Radiology"])
    for path in (f"/web-viewer/series/{own['series']}", image(own["instance"]),
                 f"/web-viewer/is-stable-series/{own['series']}"):
        assert pacs.get(path).status_code == 403
        assert pacs.get(path, no_view).status_code == 403
        assert pacs.get(path, scoped_no_view).status_code == 403


# ------------------------------------------------------------------ ways around the scope


def test_other_spellings_of_an_out_of_scope_image(pacs: Any, studies: dict[str, dict[str, str]], rad: str,
                                                   everywhere: str) -> None:
    """Each of these reaches the out-of-scope image on the real plugin (the unscoped token proves it),
    and each is refused to the scoped token."""
    other = studies[OUT]["instance"]
    served = [
        image(other, "jpeg095"),  # the plugin reads quality 95
        image(other, "jpeg100"),
        image(other) + "/",  # Orthanc drops the trailing slash
        f"/web-viewer/series/{studies[OUT]['series']}/",
        image(other) + "?series=" + studies[IN]["series"],
        f"/web-viewer/series/{studies[OUT]['series']}?instance={studies[IN]['instance']}",
    ]
    for path in served:
        assert raw(pacs, path, everywhere)[0] == 200, path
        assert raw(pacs, path, rad)[0] == 403, path


def test_encoded_characters(pacs: Any, studies: dict[str, dict[str, str]], rad: str, everywhere: str) -> None:
    """Orthanc percent-decodes the path before the filter and the plugin see it (checked: the filter gets
    ``jpeg95-...`` for ``%6apeg95-...``), so an encoded id is the very same image and judged as such."""
    other, own = studies[OUT]["instance"], studies[IN]["instance"]
    for instance, scoped_status in ((other, 403), (own, 200)):
        for path in (f"/web-viewer/instances/%6apeg95-{instance}_0",
                     f"/web-viewer/instances/jpeg95%2d{instance}_0",
                     image(instance.replace("-", "%2d", 1)),
                     image(instance[:3] + "%" + instance[3].encode().hex() + instance[4:]),
                     f"/web-viewer/instances/jpeg95-{instance}%5f0"):
            assert raw(pacs, path, everywhere)[0] == 200, path  # the encoded alias is real
            assert raw(pacs, path, rad)[0] == scoped_status, path
    series = studies[OUT]["series"]
    path = f"/web-viewer/series/%{series[0].encode().hex()}{series[1:]}"
    assert raw(pacs, path, everywhere)[0] == 200 and raw(pacs, path, rad)[0] == 403


def test_odd_prefixes_and_wrappers(pacs: Any, studies: dict[str, dict[str, str]], rad: str) -> None:
    other, own = studies[OUT], studies[IN]
    for path in (
        image(other["instance"], "JPEG95"), image(other["instance"], "Jpeg95"), image(other["instance"], "jpeg"),
        image(other["instance"], "png95"), image(other["instance"], "deflate", 1),
        # an out-of-scope id inside an in-scope-looking wrapper
        image(f"{own['instance']}-{other['instance']}"), image(f"{other['instance']}-{own['instance']}"),
        f"/web-viewer/instances/jpeg95-{own['instance']}_0-{other['instance']}_0",
        f"/web-viewer/instances/jpeg95-{other['instance']}",
        f"/web-viewer/instances/{other['instance']}_0",
        f"/web-viewer/series/{own['series']}-{other['series']}",
        f"/web-viewer/series/{other['series'].upper()}",
    ):
        assert raw(pacs, path, rad)[0] == 403, path


def test_ids_of_another_level(pacs: Any, studies: dict[str, dict[str, str]], rad: str) -> None:
    """The viewer's routes read one level each: a study, patient or instance id where a series id goes
    (or the reverse) is no resource of that level, so nothing to judge: refused even when in scope."""
    own = studies[IN]
    for path in (f"/web-viewer/series/{own['study']}", f"/web-viewer/series/{own['instance']}",
                 f"/web-viewer/series/{own['patient']}", f"/web-viewer/is-stable-series/{own['instance']}",
                 image(own["series"]), image(own["study"]), image(own["patient"])):
        assert raw(pacs, path, rad)[0] == 403, path


def test_paths_and_methods_the_viewer_does_not_use(pacs: Any, studies: dict[str, dict[str, str]],
                                                    everywhere: str) -> None:
    """No rule, no access, whatever the token: extra segments, the folder itself, writes."""
    own = studies[IN]
    admin = scoped_token(pacs.bridge, [P.VIEW, P.DOWNLOAD, P.ADMIN, P.SETTINGS, P.MODIFY, P.DELETE])
    for token in (everywhere, admin):
        for path in (f"/web-viewer/series/{own['series']}/x", image(own["instance"]) + "/file",
                     f"/web-viewer/series/{own['series']}/instances", "/web-viewer/", "/web-viewer/app/",
                     "/web-viewer/cache"):
            assert raw(pacs, path, token)[0] == 403, path
        for method in ("POST", "PUT", "DELETE"):
            for path in (f"/web-viewer/series/{own['series']}", image(own["instance"]),
                         "/web-viewer/app/viewer.html"):
                assert raw(pacs, path, token, method)[0] == 403, (method, path)


def test_allowed_images_are_audited_with_their_study(pacs: Any, studies: dict[str, dict[str, str]], rad: str,
                                                     audit_events: Any) -> None:
    own = studies[IN]
    assert pacs.get(image(own["instance"], "jpeg80"), rad).status_code == 200
    found = audit_events("study.accessed", lambda e: json.dumps(e).find(own["study_uid"]) >= 0)
    assert found, "no access event naming the study"
