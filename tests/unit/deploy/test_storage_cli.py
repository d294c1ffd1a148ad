"""`pacs-bridge keys rotate-storage`, `pacs-bridge storage ...`, and how the storage settings reach the
plugin (orthanc-config, the plugin's config file, the plugin's start)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bridge.cli import main
from bridge.core import envelope
from bridge.deploy.orthanc_config import plugin_settings
from bridge.pacs import orthanc_plugin, plugin_config, storage_area

UUID = "0a1b2c3d-0000-4000-8000-00000000abcd"


def _settings(tmp_path: Path, **extra: object) -> Path:
    cfg = tmp_path / "bridge-plugin.json"
    base = plugin_settings(issuer="https://bridge.test", audience="pacs", ca_file=None, spool_dir=tmp_path / "spool",
                           orthanc_log_file=None, pacs_name="orthanc", storage_dir=tmp_path / "store",
                           storage_kek_file=tmp_path / "kek.json")
    base["storage"].update(extra)
    cfg.write_text(json.dumps(base))
    return cfg


def test_init_status_rotate_through_the_cli(tmp_path: Path) -> None:
    cfg = _settings(tmp_path)
    run = CliRunner().invoke(main, ["storage", "init-key", "--plugin-config", str(cfg)])
    assert run.exit_code == 0, run.output
    again = CliRunner().invoke(main, ["storage", "init-key", "--plugin-config", str(cfg)])
    assert again.exit_code == 2 and "exists already" in again.output
    area = storage_area.build(storage_area.StorageSettings(str(tmp_path / "store"), str(tmp_path / "kek.json")),
                              sync=False)
    area.create(UUID, 1, b"\0" * 128 + b"DICM")
    first = envelope.parse_key_file((tmp_path / "kek.json").read_text(), "k").current
    rot = CliRunner().invoke(main, ["keys", "rotate-storage", "--plugin-config", str(cfg), "--grace", "0"])
    assert rot.exit_code == 0, rot.output
    now = envelope.parse_key_file((tmp_path / "kek.json").read_text(), "k").current
    assert now != first
    status = CliRunner().invoke(main, ["storage", "status", "--plugin-config", str(cfg)])
    assert status.exit_code == 0 and json.loads(status.stdout)["encrypted_by_key"] == {now: 1}
    assert area.read(UUID, 1) == b"\0" * 128 + b"DICM"


def test_cli_names_a_missing_storage_section(tmp_path: Path) -> None:
    cfg = tmp_path / "p.json"
    cfg.write_text("{}")
    run = CliRunner().invoke(main, ["storage", "status", "--plugin-config", str(cfg)])
    assert run.exit_code == 2 and "storage:" in run.output and str(cfg) in run.output


def test_plugin_config_accepts_the_storage_object(tmp_path: Path) -> None:
    cfg = _settings(tmp_path)
    assert plugin_config.read_file(cfg, environ={}).issuer == "https://bridge.test"


def test_plugin_start_reads_storage_settings_or_fails_closed(tmp_path: Path) -> None:
    cfg = _settings(tmp_path, plaintext_reads=True)
    whole = {"PacsBridge": {"ConfigFile": str(cfg)}}
    got = orthanc_plugin.storage_settings(whole, environ={})
    assert isinstance(got, storage_area.StorageSettings) and got.plaintext_reads
    # no storage object: Orthanc's own storage (docs say check-config warns)
    assert orthanc_plugin.storage_settings({"PacsBridge": {"issuer": "x"}}, environ={}) is None
    # unreadable file or a bad storage object: a reason string (the plugin registers a failing area)
    assert isinstance(orthanc_plugin.storage_settings({"PacsBridge": {"ConfigFile": str(tmp_path / "nope")}},
                                                      environ={}), str)
    cfg.write_text(json.dumps({"storage": {"directory": "/x"}}))
    reason = orthanc_plugin.storage_settings(whole, environ={})
    assert isinstance(reason, str) and "storage.kek_file" in reason
    failing = storage_area.UnavailableStorageArea(reason)
    for call in (lambda: failing.read(UUID, 1), lambda: failing.create(UUID, 1, b"x"), lambda: failing.remove(UUID, 1)):
        try:
            call()
        except storage_area.StorageReadError:
            continue
        raise AssertionError("an unusable storage must refuse every call")


def test_storage_dir_and_kek_go_together(tmp_path: Path) -> None:
    try:
        plugin_settings(issuer="https://b.test", audience="pacs", ca_file=None, spool_dir=tmp_path,
                        orthanc_log_file=None, pacs_name="o", storage_dir=tmp_path)
    except ValueError as exc:
        assert "storage_kek_file" in str(exc)
    else:
        raise AssertionError("expected ValueError")
