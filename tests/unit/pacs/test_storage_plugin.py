"""How the plugin registers the encrypted storage area with Orthanc (a stand-in ``orthanc`` module:
the real one exists only inside Orthanc), and the bounded scratch-buffer pool it reads through."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from bridge.pacs import orthanc_plugin, storage_area

UUID = "0a1b2c3d-0000-4000-8000-00000000abcd"


def _fake_orthanc(config: dict[str, Any]) -> types.SimpleNamespace:
    calls: dict[str, Any] = {"errors": [], "warnings": []}
    return types.SimpleNamespace(
        calls=calls,
        GetConfiguration=lambda: json.dumps(config),
        RegisterStorageArea=lambda c, r, d: calls.update(area=(c, r, d)),
        LogError=calls["errors"].append,
        LogWarning=calls["warnings"].append,
    )


def _plugin_file(tmp_path: Path, storage: dict[str, Any] | None) -> Path:
    cfg = tmp_path / "bridge-plugin.json"
    cfg.write_text(json.dumps({"issuer": "https://b.test", **({"storage": storage} if storage else {})}))
    return cfg


def test_registers_the_encrypted_area_and_it_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _plugin_file(tmp_path, {"directory": str(tmp_path / "s"), "kek_file": str(tmp_path / "k" / "kek.json"),
                                  "create_key": True})
    fake = _fake_orthanc({"PacsBridge": {"ConfigFile": str(cfg)}, "SyncStorageArea": False})
    monkeypatch.setattr(orthanc_plugin, "orthanc", fake)
    monkeypatch.delenv("PACS_BRIDGE_PLUGIN_CONFIG", raising=False)
    orthanc_plugin._register_storage_area()
    create, read, remove = fake.calls["area"]
    create(UUID, 1, b"\0" * 128 + b"DICM Doe^Jane")
    raw = storage_area.attachment_path(tmp_path / "s", UUID).read_bytes()
    assert b"Doe^Jane" not in raw and read(UUID, 1) == b"\0" * 128 + b"DICM Doe^Jane"
    remove(UUID, 1)
    assert not fake.calls["errors"] and any("encrypted storage in" in w for w in fake.calls["warnings"])


@pytest.mark.parametrize("storage", [
    {"directory": "/nonexistent-dir-x", "kek_file": "/nonexistent-dir-x/kek.json"},  # no key file, no create_key
    {"directory": "/x"},  # no kek_file
    {"directory": "/x", "kek_file": "/k", "plaintext_reads": "yes"},  # not a bool
])
def test_unusable_settings_register_an_area_that_refuses_everything(tmp_path: Path, storage: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _plugin_file(tmp_path, storage)
    fake = _fake_orthanc({"PacsBridge": {"ConfigFile": str(cfg)}})
    monkeypatch.setattr(orthanc_plugin, "orthanc", fake)
    monkeypatch.delenv("PACS_BRIDGE_PLUGIN_CONFIG", raising=False)
    orthanc_plugin._register_storage_area()
    create, read, remove = fake.calls["area"]  # registered: Orthanc's plaintext storage never takes over
    for call in (lambda: create(UUID, 1, b"x"), lambda: read(UUID, 1), lambda: remove(UUID, 1)):
        with pytest.raises(storage_area.StorageReadError):
            call()
    assert fake.calls["errors"] and "unusable" in fake.calls["errors"][0]


def test_no_storage_settings_keep_orthancs_storage_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_orthanc({"PacsBridge": {"ConfigFile": str(_plugin_file(tmp_path, None))}})
    monkeypatch.setattr(orthanc_plugin, "orthanc", fake)
    monkeypatch.delenv("PACS_BRIDGE_PLUGIN_CONFIG", raising=False)
    orthanc_plugin._register_storage_area()
    assert "area" not in fake.calls and any("plaintext" in w for w in fake.calls["warnings"])


def test_buffer_pool_is_bounded_and_reuses() -> None:
    pool = storage_area.BufferPool(keep=2, max_bytes=4 << 20)
    a = pool.get(100)
    assert len(a) >= 100
    pool.put(a)
    assert pool.get(50) is a  # reused
    big = pool.get(8 << 20)
    pool.put(big)  # above max_bytes: not kept
    assert pool.get(8 << 20) is not big
    bufs = [pool.get(1 << 20) for _ in range(4)]
    for b in bufs:
        pool.put(b)
    assert len(pool._free) == 2


def test_buffer_pool_buffers_start_on_a_page() -> None:
    # a whole file read from offset 0 into a buffer 8-16 bytes into a page hits the kernel's slow
    # rep-movsb path on Zen 3 (10x, docs/performance.md): the pool's buffers start on a page
    import ctypes
    import mmap

    pool = storage_area.BufferPool(keep=2, max_bytes=4 << 20)
    for size in (100, 600_000, 2_100_000, 8 << 20):
        buf = pool.get(size)
        anchor = ctypes.c_char.from_buffer(buf)
        assert ctypes.addressof(anchor) % mmap.PAGESIZE == 0, size
        del anchor
        pool.put(buf)


def test_a_storage_failure_is_shipped_as_an_audit_event(tmp_path: Path) -> None:
    from bridge.pacs.audit_shipper import AuditShipper

    sent: list[dict[str, Any]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.extend(json.loads(body)["events"])
        return 202

    shipper = AuditShipper(source="orthanc", issuer="https://b.test", spool_dir=str(tmp_path / "spool"),
                           audit_url="https://b.test/audit/events", post=post)
    failure = storage_area.StorageFailure("read", UUID, 1, "damaged", "the encrypted body failed authentication")
    shipper.record_event(failure.to_event("orthanc"))
    assert shipper.flush() == 1
    (event,) = sent
    assert event["type"] == "storage.integrity_failure" and event["details"]["reason"] == "damaged"
    assert {"kind": "attachment", "id": UUID, "name": "dicom"} in event["objects"]
