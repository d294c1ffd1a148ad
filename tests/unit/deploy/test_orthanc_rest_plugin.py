"""The plugin's REST helper library (bridge/deploy/orthanc_rest_plugin.py), built from its source with
Debian's Orthanc SDK header and loaded outside Orthanc: what Orthanc and the Python side look up in it,
and that it refuses to work before Orthanc initialised it.  Inside Orthanc:
tests/integration/pacs/test_rest_without_gil.py."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

import pytest

from bridge.deploy import orthanc_rest_plugin
from bridge.pacs import orthanc_rest

HEADER = Path("/usr/include/orthanc/OrthancCPlugin.h")
needs_sdk = pytest.mark.skipif(
    os.environ.get("CI") != "true" and not (HEADER.is_file() and (shutil.which("cc") or shutil.which("gcc"))),
    reason="no gcc or orthanc-dev here (the dev stack installs both)")


@needs_sdk
def test_the_library_has_orthancs_entry_points_and_the_bridges_calls(tmp_path: Path) -> None:
    path = orthanc_rest_plugin.build(tmp_path)
    assert orthanc_rest_plugin.built(tmp_path) and path.name == orthanc_rest.LIBRARY
    lib = ctypes.CDLL(str(path))
    for name in ("OrthancPluginInitialize", "OrthancPluginFinalize", "OrthancPluginGetName",
                 "OrthancPluginGetVersion", "pacs_bridge_rest_ready", "pacs_bridge_rest_call",
                 "pacs_bridge_rest_free", "pacs_bridge_rest_error"):
        assert getattr(lib, name) is not None, name
    lib.OrthancPluginGetName.restype = ctypes.c_char_p
    assert lib.OrthancPluginGetName() == b"python-pacs-bridge-rest"


@needs_sdk
def test_outside_orthanc_it_is_not_ready_and_every_call_is_an_error(tmp_path: Path) -> None:
    lib = ctypes.CDLL(str(orthanc_rest_plugin.build(tmp_path)))
    assert lib.pacs_bridge_rest_ready() == 0
    rest = orthanc_rest.RestWithoutGil(lib, lambda code, text: RuntimeError(code, text))
    with pytest.raises(RuntimeError) as err:
        rest.get("/system")
    assert err.value.args == (6, "Orthanc is not running")  # OrthancPluginErrorCode_BadSequenceOfCalls


def test_the_python_side_knows_the_librarys_name() -> None:
    """The plugin bundle holds only core and pacs: the name is written twice, and must agree."""
    assert orthanc_rest.LIBRARY == orthanc_rest_plugin.LIBRARY


def test_the_generated_config_loads_it_before_the_python_plugin(tmp_path: Path) -> None:
    """Orthanc initialises plugins in the listed order; the Python plugin looks for the library when
    its script loads, so the library must come first (or the plugin runs with the hazard)."""
    from bridge.deploy.orthanc_config import PYTHON_PLUGIN, DicomTls, orthanc_config

    common = {"name": "t", "aet": "T", "http_port": 1, "dicom_port": 2, "storage_dir": tmp_path / "s",
              "index_dir": tmp_path / "i", "https_certificate": tmp_path / "h.pem",
              "dicom_tls": DicomTls(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")}
    lib = tmp_path / orthanc_rest_plugin.LIBRARY
    plugins = orthanc_config(**common, python_script=tmp_path / "p.py", rest_plugin=lib)["Plugins"]
    assert plugins[:2] == [str(lib), str(PYTHON_PLUGIN)]
    assert str(lib) not in orthanc_config(**common, python_script=tmp_path / "p.py")["Plugins"]
    assert str(lib) not in orthanc_config(**common, with_filter=False, rest_plugin=lib)["Plugins"]


def test_a_host_without_orthanc_dev_still_gets_its_https_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper is wanted, not required: its build failing warns (naming the package) and the
    command still succeeds, so Orthanc starts (the plugin then logs the hazard)."""
    from click.testing import CliRunner

    from bridge.cli import main
    from bridge.deploy import c_build, civetweb_tls

    def no_header(out_dir: Path, cc: str | None = None) -> Path:
        raise c_build.BuildError("orthanc/OrthancCPlugin.h: No such file or directory")

    monkeypatch.setattr(civetweb_tls, "build", lambda out_dir, cc=None: out_dir)
    monkeypatch.setattr(orthanc_rest_plugin, "build", no_header)
    res = CliRunner().invoke(main, ["plugin", "civetweb-tls-shim", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "warning: the plugin's REST helper was not built" in res.output and "orthanc-dev" in res.output
