"""`pacs-bridge plugin orthanc-config` and `pacs-bridge web` (bridge/deploy/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.deploy.web_server import web_argv

MODALITIES = {"ct": {"aet": "CT01", "host": "10.0.0.5", "port": 104, "allow": ["echo", "store"]}}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(__import__("os").environ):
        if name.startswith("PACS_BRIDGE_"):
            monkeypatch.delenv(name)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"bridge": {"public_url": "https://bridge.example:9443"},
                                    "pacs": {"audience": "pacs", "modalities": MODALITIES}}))
    return path


#: Orthanc's TLS files (required: there is no plain HTTP or plain DICOM port)
TLS_ARGS = ("--https-certificate", "/etc/o/https.pem", "--dicom-tls-certificate", "/etc/o/dicom.pem",
            "--dicom-tls-key", "/etc/o/dicom-key.pem", "--modality-ca", "/etc/o/modality-ca.pem")


def _generate(config: Path, out: Path, *extra: str) -> tuple[dict, dict]:
    res = CliRunner().invoke(main, ["plugin", "orthanc-config", "-c", str(config), "--out", str(out),
                                    "--bundle", "/opt/bundle", "--data-dir", "/var/lib/o", *TLS_ARGS, *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "orthanc.json").read_text()), json.loads((out / "bridge-plugin.json").read_text())


def test_orthanc_config_is_the_hardened_one_with_the_site_modalities(config: Path, tmp_path: Path) -> None:
    orthanc, plugin = _generate(config, tmp_path / "out")
    assert orthanc["PythonScript"] == "/opt/bundle/pacs_bridge_plugin.py"
    assert orthanc["PacsBridge"] == {"ConfigFile": str(tmp_path / "out" / "bridge-plugin.json")}
    assert orthanc["RemoteAccessAllowed"] is False and orthanc["AuthenticationEnabled"] is False
    assert not any(v for k, v in orthanc.items() if k.startswith("DicomAlwaysAllow"))
    ct = orthanc["DicomModalities"]["ct"]
    assert (ct["AET"], ct["Host"], ct["AllowEcho"], ct["AllowStore"], ct["AllowFind"], ct["AllowMove"]) == \
        ("CT01", "10.0.0.5", True, True, False, False)
    assert orthanc["StorageDirectory"] == "/var/lib/o/storage"
    assert plugin["jwks_url"] == "https://bridge.example:9443/jwks.json"
    assert plugin["revocation_url"] == "https://bridge.example:9443/revocations"
    assert "audit_url" not in plugin and "mfa" in plugin


def test_remote_access_and_audit_are_explicit_options(config: Path, tmp_path: Path) -> None:
    orthanc, plugin = _generate(config, tmp_path / "out", "--remote-access", "--audit-token-file", "/run/t",
                                "--ca-file", "/etc/ca.pem")
    assert orthanc["RemoteAccessAllowed"] is True
    assert orthanc["DicomAlwaysAllowEcho"] is False  # remote access opens HTTP only
    assert plugin["audit_url"] == "https://bridge.example:9443/audit/events"
    assert plugin["audit_token_file"] == "/run/t" and plugin["ca_file"] == "/etc/ca.pem"


def test_orthanc_config_refuses_a_broken_configuration_naming_the_key(config: Path, tmp_path: Path) -> None:
    config.write_text(yaml.safe_dump({"pacs": {"modalities": {"ct": {"aet": "A\\B", "host": "h", "port": 104}}}}))
    res = CliRunner().invoke(main, ["plugin", "orthanc-config", "-c", str(config), "--out", str(tmp_path / "o"),
                                    "--bundle", "/b", "--data-dir", "/d", *TLS_ARGS])
    assert res.exit_code == 2 and "aet" in res.output
    assert not (tmp_path / "o" / "orthanc.json").exists()


def test_orthanc_serves_https_and_dicom_tls_only(config: Path, tmp_path: Path) -> None:
    orthanc, _ = _generate(config, tmp_path / "out")
    assert orthanc["SslEnabled"] is True and orthanc["SslCertificate"] == "/etc/o/https.pem"
    assert orthanc["SslMinimumProtocolVersion"] >= 4  # TLS 1.2 or later
    assert orthanc["DicomTlsEnabled"] is True and orthanc["DicomTlsRemoteCertificateRequired"] is True
    assert (orthanc["DicomTlsCertificate"], orthanc["DicomTlsPrivateKey"], orthanc["DicomTlsTrustedCertificates"]) \
        == ("/etc/o/dicom.pem", "/etc/o/dicom-key.pem", "/etc/o/modality-ca.pem")
    assert all(m["UseDicomTls"] is True for m in orthanc["DicomModalities"].values())


def test_the_cfind_audit_script_is_written_and_loaded(config: Path, tmp_path: Path) -> None:
    from bridge.deploy.orthanc_config import FIND_AUDIT_LUA

    orthanc, _ = _generate(config, tmp_path / "out")
    script = tmp_path / "out" / FIND_AUDIT_LUA
    assert orthanc["LuaScripts"] == [str(script)] and orthanc["ExecuteLuaEnabled"] is False
    text = script.read_text()
    assert "function IncomingFindRequestFilter(query, origin)" in text and "return query" in text
    assert "pairs(query)" in text and "DumpJson" in text  # tag names only, escaped


@pytest.mark.parametrize("left_out", ["--https-certificate", "--dicom-tls-certificate", "--dicom-tls-key",
                                      "--modality-ca"])
def test_orthanc_config_has_no_plain_transport_option(config: Path, tmp_path: Path, left_out: str) -> None:
    i = TLS_ARGS.index(left_out)
    args = TLS_ARGS[:i] + TLS_ARGS[i + 2:]
    res = CliRunner().invoke(main, ["plugin", "orthanc-config", "-c", str(config), "--out", str(tmp_path / "o"),
                                    "--bundle", "/b", "--data-dir", "/d", *args])
    assert res.exit_code == 2 and left_out in res.output
    assert not (tmp_path / "o" / "orthanc.json").exists()


def test_web_refuses_a_configuration_without_tls(config: Path) -> None:
    res = CliRunner().invoke(main, ["web", "-c", str(config)])
    assert res.exit_code == 2 and "tls_cert_file" in res.output


def test_the_web_server_command_line(tmp_path: Path) -> None:
    import sys

    argv = web_argv("0.0.0.0:9443", tmp_path / "c.pem", tmp_path / "k.pem")
    assert argv[:3] == [sys.executable, "-m", "bridge.deploy.web_server"]  # this interpreter, never PATH's
    assert argv[argv.index("--cert") + 1] == str(tmp_path / "c.pem")
    assert argv[argv.index("--key") + 1] == str(tmp_path / "k.pem")
    with pytest.raises(ValueError, match="TLS only"):
        web_argv("0.0.0.0:9443", None, None)
