"""The Orthanc filter fails closed, and the generated Orthanc config keeps its secure defaults.

These run without Orthanc: the plugin module guards its `import orthanc`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bridge.deploy.orthanc_config import (
    PYTHON_PLUGIN,
    DicomTls,
    orthanc_config,
)
from bridge.pacs import orthanc_plugin

#: Orthanc's TLS files (required arguments of orthanc_config; the paths are not read)
TLS = {"https_certificate": Path("/etc/o/https.pem"),
       "dicom_tls": DicomTls(Path("/etc/o/dicom.pem"), Path("/etc/o/dicom-key.pem"), Path("/etc/o/modality-ca.pem"))}



def test_plugin_imports_without_orthanc() -> None:
    assert orthanc_plugin.orthanc is None


def test_filter_denies_by_default() -> None:
    assert orthanc_plugin.incoming_http_request_filter("/system", method=1, ip="127.0.0.1",
                                                       headers={}, get={}) is False


@pytest.mark.parametrize("outcome", [RuntimeError("boom"), "yes", 1, None])
def test_filter_turns_errors_and_non_bools_into_denial(
    monkeypatch: pytest.MonkeyPatch, outcome: object
) -> None:
    def decide(*_args: object) -> object:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(orthanc_plugin, "decide", decide)
    # Orthanc would answer 500 for an exception or a non-bool: the wrapper must give False instead
    assert orthanc_plugin.incoming_http_request_filter("/system", method=1, headers={}) is False
    assert orthanc_plugin.incoming_http_request_filter("/system") is False


def test_config_secure_defaults(tmp_path: Path) -> None:
    script = tmp_path / "bundle" / "pacs_bridge_plugin.py"
    cfg = orthanc_config(name="t", aet="T", http_port=1, dicom_port=2, **TLS, storage_dir=tmp_path / "s",
                         index_dir=tmp_path / "i", modalities={"bridge": ("BRIDGE", "127.0.0.1", 11112)},
                         python_script=script)
    assert cfg["RemoteAccessAllowed"] is False
    assert cfg["AuthenticationEnabled"] is False  # explicit: Basic auth would run before the filter
    assert not any(v for k, v in cfg.items() if k.startswith("DicomAlwaysAllow"))
    assert cfg["DicomCheckCalledAet"] is True
    assert cfg["WebDavEnabled"] is False and cfg["ExecuteLuaEnabled"] is False
    assert cfg["DicomModalities"] == {"bridge": ["BRIDGE", "127.0.0.1", 11112]}
    assert cfg["PythonScript"] == str(script)
    assert str(PYTHON_PLUGIN) in cfg["Plugins"]


def test_filter_needs_the_bundle_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="python_script"):
        orthanc_config(name="t", aet="T", http_port=1, dicom_port=2, **TLS, storage_dir=tmp_path, index_dir=tmp_path)


def test_plain_config_has_no_filter(tmp_path: Path) -> None:
    cfg = orthanc_config(name="t", aet="T", http_port=1, dicom_port=2, **TLS, storage_dir=tmp_path,
                         index_dir=tmp_path, with_filter=False)
    assert "PythonScript" not in cfg
    assert str(PYTHON_PLUGIN) not in cfg["Plugins"]


def test_received_instances_fail_closed_but_cstore_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.pacs import gate

    monkeypatch.setattr(orthanc_plugin, "_ORIGINS", {2: "dicom", 3: "rest", 4: "plugin"})
    assert orthanc_plugin.admit_instance(b"", 2) is True  # C-STORE: Orthanc admits configured modalities
    assert orthanc_plugin.admit_instance(b"", 3) is False  # no configured gate: REST uploads discarded
    assert orthanc_plugin.admit_instance(b"", 4) is False
    assert orthanc_plugin.admit_instance(b"", 99) is False
    gate._REQUESTS[threading.get_ident()] = gate.RequestContext({"sub": "x"}, "POST", "/instances", "")
    orthanc_plugin.incoming_http_request_filter("/system", method=1, headers={})
    assert gate.current_request() is None  # every request starts without the last one's token


def test_received_instance_callback_discards_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    fake = SimpleNamespace(ReceivedInstanceAction=SimpleNamespace(KEEP_AS_IS="keep", DISCARD="discard"))
    monkeypatch.setattr(orthanc_plugin, "orthanc", fake)

    def boom(data: bytes, origin: int) -> bool:
        raise RuntimeError("lookup failed")

    monkeypatch.setattr(orthanc_plugin, "admit_instance", boom)
    assert orthanc_plugin.received_instance_callback(b"", 3) == ("discard", None)
    monkeypatch.setattr(orthanc_plugin, "admit_instance", lambda data, origin: True)
    assert orthanc_plugin.received_instance_callback(b"", 3) == ("keep", None)
    monkeypatch.setattr(orthanc_plugin, "admit_instance", lambda data, origin: 1)  # only True keeps
    assert orthanc_plugin.received_instance_callback(b"", 3) == ("discard", None)
