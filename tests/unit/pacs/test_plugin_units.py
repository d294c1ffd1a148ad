"""Plugin pieces without Orthanc: its config file, scope targets/checks, pacs.modalities validation."""

from __future__ import annotations

import pytest

from bridge.config import ConfigError, load_config
from bridge.core import grants
from bridge.deploy.orthanc_config import dicom_modalities
from bridge.pacs import plugin_config, scopes

BASE = {"issuer": "https://b", "audience": "pacs", "jwks_url": "https://b/jwks.json",
        "revocation_url": "https://b/revocations"}


def test_plugin_config_validation_and_env() -> None:
    cfg = plugin_config.build(BASE, "f.json", environ={"PACS_BRIDGE_PLUGIN_LEEWAY_SECONDS": "5"})
    assert cfg.leeway_seconds == 5 and cfg.algorithms == ("ES256", "RS256", "EdDSA")
    with pytest.raises(plugin_config.PluginConfigError, match="jwks_url must be an https"):
        plugin_config.build({**BASE, "jwks_url": "http://b"}, "f.json", environ={})
    with pytest.raises(plugin_config.PluginConfigError, match="unknown key"):
        plugin_config.build({**BASE, "jwks": "x"}, "f.json", environ={})
    with pytest.raises(plugin_config.PluginConfigError, match="issuer"):
        plugin_config.build({"audience": "pacs", "jwks_url": "https://b"}, "f.json", environ={})


def test_plugin_config_without_revocation_is_unusable() -> None:
    """A revoked token must not stay valid until it expires: no revocation_url, no configuration."""
    bare = {k: v for k, v in BASE.items() if k != "revocation_url"}
    with pytest.raises(plugin_config.PluginConfigError, match="revocation_url is required"):
        plugin_config.build(bare, "f.json", environ={})
    with pytest.raises(plugin_config.PluginConfigError, match="revocation_url is required"):
        plugin_config.build(BASE, "f.json", environ={"PACS_BRIDGE_PLUGIN_REVOCATION_URL": ""})


def test_targets() -> None:
    assert scopes.targets_of("/studies/abc/archive").targets == (scopes.Target("studies", "abc"),)
    assert scopes.targets_of("/dicom-web/studies/1.2.3/series").targets == (scopes.Target("study-uid", "1.2.3"),)
    assert scopes.targets_of("/dicom-web/studies", {"StudyInstanceUID": "1.2"}).targets == (
        scopes.Target("study-uid", "1.2"),)
    assert scopes.targets_of("/dicom-web/studies", {"StudyInstanceUID": "1.*"}).problem
    assert scopes.targets_of("/studies") == scopes.targets_of("/system") == scopes.NOTHING


def test_upload_check_fails_closed() -> None:
    study = scopes.StudyInfo("", "1.2", "P1", "Radiology", "Hospital")

    def uploaders(scope: object) -> tuple[grants.Grant, ...]:
        return grants.from_claims({"grants": [{"kind": "role", "permissions": ["upload"], "scope": scope}]})

    assert scopes.upload_allowed(uploaders({}), study, [])[0]
    assert scopes.upload_allowed(uploaders({"departments": ["Radiology"]}), study, [])[0]
    assert not scopes.upload_allowed(uploaders({"departments": ["Cardiology"]}), study, [])[0]
    assert not scopes.upload_allowed(uploaders("everything"), study, [])[0]
    assert not scopes.upload_allowed(uploaders({"departments": "Radiology"}), study, [])[0]
    assert not scopes.upload_allowed((), study, [])[0]


def test_modalities_config() -> None:
    s = load_config(pacs={"modalities": {"ct1": {"aet": "CT1", "host": "10.0.0.5", "port": 104,
                                                   "allow": ["echo", "store"]}}})
    entry = dicom_modalities(s.pacs)["ct1"]
    assert entry["AET"] == "CT1" and entry["AllowStore"] and not entry["AllowFind"] and not entry["AllowMove"]
    for bad, where in (({"a": {"aet": "X" * 17, "host": "h", "port": 1}}, "aet"),
                       ({"a": {"aet": "A\\B", "host": "h", "port": 1}}, "aet"),
                       ({"a": {"aet": "A", "host": "h", "port": 70000}}, "port"),
                       ({"a": {"aet": "A", "host": "h", "port": 1}, "b": {"aet": "a", "host": "i", "port": 2}},
                        "also used")):
        with pytest.raises(ConfigError, match=where):
            load_config(pacs={"modalities": bad})
