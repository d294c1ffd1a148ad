"""Orthanc's configuration, generated as one JSON document (Orthanc 1.10.1 + orthanc-python 4.0).

Kept apart from the dev stack so the PACS part can extend it (authorization settings, viewer
plugins) and a deployment can generate the same secure defaults.  Choices and why:

- ``AuthenticationEnabled: false`` *explicitly*: otherwise Orthanc's built-in Basic auth also
  claims the ``Authorization`` header and runs before the bridge's Python request filter.
- ``RemoteAccessAllowed: false``: Orthanc 1.10.1 has no option to bind HTTP or DICOM to one
  address (there is no ``HttpBindAddress``/``DicomBindAddress``; both listeners bind every
  interface).  With remote access off, Orthanc answers HTTP requests from non-loopback peers
  with 403 before any handler runs; DICOM is guarded by the settings below.
- DICOM: no ``DicomAlwaysAllow*``, the called AET must be Orthanc's own, and a peer must be a
  configured modality *from its configured host* (``DicomCheckModalityHost``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: where Debian's orthanc-python and orthanc-dicomweb put their plugins
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PYTHON_PLUGIN = PLUGIN_DIR / "libOrthancPython.so"
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"

#: the request filter the bridge installs into Orthanc (a file of this package)
FILTER_SCRIPT = Path(__file__).resolve().with_name("orthanc_plugin.py")


def orthanc_config(
    *,
    name: str,
    aet: str,
    http_port: int,
    dicom_port: int,
    storage_dir: Path,
    index_dir: Path,
    with_filter: bool = True,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Orthanc JSON config.

    `modalities` maps a symbolic name to ``(AET, host, port)``: the only DICOM peers allowed.
    `with_filter=False` gives a plain Orthanc (DICOMweb only, no Python filter) as a benchmark
    baseline.  `extra` is merged last (top-level keys replace).
    """
    plugins = [str(DICOMWEB_PLUGIN)]
    config: dict[str, Any] = {
        "Name": name,
        "DicomAet": aet,
        "StorageDirectory": str(storage_dir),
        "IndexDirectory": str(index_dir),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "HttpDescribeErrors": False,
        "DicomServerEnabled": True,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "DicomModalitiesInDatabase": False,
        "OrthancPeers": {},
        "ExecuteLuaEnabled": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "Plugins": plugins,
    }
    if with_filter:
        plugins.insert(0, str(PYTHON_PLUGIN))
        config["PythonScript"] = str(FILTER_SCRIPT)
        config["PythonVerbose"] = False
    if extra:
        config.update(extra)
    return config
