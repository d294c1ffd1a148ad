"""The encrypted image store's unit cases, written so that two interpreters run them: the venv's
pytest (``test_storage_area.py`` collects :data:`CASES`) and Debian's ``/usr/bin/python3 -I`` with
python3-cryptography 38, importing the core and the plugin modules from a built plugin bundle (what
Orthanc runs).  Stdlib + the bundle's modules only; each case makes its own temp directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bridge.core import envelope
from bridge.core.envelope import EnvelopeError
from bridge.pacs import storage_area
from bridge.pacs.storage_area import EncryptedStorageArea, StorageReadError

U1 = "0a1b2c3d-0000-4000-8000-00000000abcd"
U2 = "ff0e1d2c-1111-4111-8111-11111111dcba"
DICOM = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"PATIENT^DEMO" * 100


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="pb-storage-"))


def _area(root: Path, **kw: object) -> tuple[EncryptedStorageArea, list[storage_area.StorageFailure], Path]:
    kek = root / "kek.json"
    if not kek.exists():
        envelope.create_key_file(str(kek))
    failures: list[storage_area.StorageFailure] = []
    area = EncryptedStorageArea(root / "store", envelope.FileKeyProvider(str(kek)), sync=False,
                                on_failure=failures.append, **kw)  # type: ignore[arg-type]
    return area, failures, kek


def _raises(fn: Callable[[], object], kind: type[BaseException] = StorageReadError) -> BaseException:
    try:
        fn()
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}")


def case_round_trip_and_layout() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    area.create(U1, 1, DICOM)
    path = root / "store" / U1[0:2] / U1[2:4] / U1
    raw = path.read_bytes()
    assert raw[:4] == envelope.MAGIC and b"DICM" not in raw and b"PATIENT" not in raw
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert area.read(U1, 1) == DICOM
    assert not failures
    assert not [p for p in path.parent.iterdir() if p.name.startswith(storage_area.TMP_PREFIX)]
    area.remove(U1, 1)
    assert not path.exists() and not path.parent.exists()
    shutil.rmtree(root)


def case_body_is_standard_aes_gcm_under_the_unwrapped_data_key() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    root = _tmp()
    area, _, _ = _area(root)
    area.create(U1, 1, DICOM)
    raw = storage_area.attachment_path(root / "store", U1).read_bytes()
    header = envelope.parse_header(raw)
    key = envelope.unwrap_key(area.keys, header, U1, 1)
    assert AESGCM(key).decrypt(header.body_nonce, raw[header.length:], envelope.context(U1, 1)) == DICOM
    shutil.rmtree(root)


def case_empty_attachment() -> None:
    root = _tmp()
    area, _, _ = _area(root)
    area.create(U1, 2, b"")
    assert area.read(U1, 2) == b""
    shutil.rmtree(root)


def case_swapped_files_fail_and_are_reported() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    area.create(U1, 1, DICOM)
    area.create(U2, 1, DICOM[::-1])
    p1, p2 = (storage_area.attachment_path(root / "store", u) for u in (U1, U2))
    a, b = p1.read_bytes(), p2.read_bytes()
    p1.write_bytes(b)
    p2.write_bytes(a)
    for uuid in (U1, U2):
        exc = _raises(lambda uuid=uuid: area.read(uuid, 1))
        assert uuid in str(exc)
    assert [(f.uuid, f.reason, f.operation) for f in failures] == [(U1, "damaged", "read"), (U2, "damaged", "read")]
    shutil.rmtree(root)


def case_header_of_another_file_fails() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    area.create(U1, 1, DICOM)
    area.create(U2, 1, DICOM)
    p1, p2 = (storage_area.attachment_path(root / "store", u) for u in (U1, U2))
    h2 = envelope.parse_header(p2.read_bytes())
    raw1 = p1.read_bytes()
    h1 = envelope.parse_header(raw1)
    p1.write_bytes(h2.encode() + raw1[h1.length:])  # U2's wrapped key, U1's body
    _raises(lambda: area.read(U1, 1))
    assert failures[-1].reason == "damaged"
    shutil.rmtree(root)


def case_other_content_type_fails() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    area.create(U1, 1, DICOM)
    _raises(lambda: area.read(U1, 3))
    assert failures[-1].reason == "damaged"
    shutil.rmtree(root)


def case_truncated_extended_and_flipped_files_fail() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    area.create(U1, 1, DICOM)
    path = storage_area.attachment_path(root / "store", U1)
    good = path.read_bytes()
    header_len = envelope.parse_header(good).length
    variants = {
        "truncated body": good[:-1],
        "body shorter than the tag": good[: header_len + 5],
        "header only": good[:header_len],
        "cut in the header": good[:10],
        "magic only": good[:4],
        "extended": good + b"\0",
        "flipped body bit": good[:header_len + 3] + bytes([good[header_len + 3] ^ 1]) + good[header_len + 4:],
        "flipped tag bit": good[:-1] + bytes([good[-1] ^ 0x80]),
        "flipped key id": good[:30] + bytes([good[30] ^ 1]) + good[31:],
        "flipped wrapped key": good[:header_len - 20] + bytes([good[header_len - 20] ^ 1]) + good[header_len - 19:],
        "flipped body nonce": good[:header_len - 2] + bytes([good[header_len - 2] ^ 1]) + good[header_len - 1:],
        "other content type in the header": good[:6] + b"\x03" + good[7:],
        "other version": good[:4] + b"\x02" + good[5:],
    }
    for name, data in variants.items():
        path.write_bytes(data)
        exc = _raises(lambda: area.read(U1, 1))
        assert "DICM" not in str(exc), name
    reasons = {f.reason for f in failures}
    assert reasons <= {"damaged", "truncated", "unsupported-version", "unknown-key"}
    assert len(failures) == len(variants)
    path.write_bytes(good)
    assert area.read(U1, 1) == DICOM
    shutil.rmtree(root)


def case_wrong_kek_fails() -> None:
    root = _tmp()
    area, _, kek = _area(root)
    area.create(U1, 1, DICOM)
    other = root / "other.json"
    envelope.create_key_file(str(other))
    stranger = EncryptedStorageArea(root / "store", envelope.FileKeyProvider(str(other)), sync=False)
    exc = _raises(lambda: stranger.read(U1, 1))
    assert "not in the storage key file" in str(exc)
    # same key id, other key bytes: still refused
    ring = envelope.parse_key_file(kek.read_text(), "k")
    forged = envelope.LocalKeyRing({ring.current: os.urandom(32)}, ring.current)
    forged_file = root / "forged.json"
    envelope.write_key_file(str(forged_file), forged)
    bad = EncryptedStorageArea(root / "store", envelope.FileKeyProvider(str(forged_file)), sync=False)
    _raises(lambda: bad.read(U1, 1))
    shutil.rmtree(root)


def case_plaintext_passthrough_only_when_allowed() -> None:
    root = _tmp()
    area, failures, kek = _area(root)
    path = storage_area.attachment_path(root / "store", U1)
    path.parent.mkdir(parents=True)
    path.write_bytes(DICOM)  # what Orthanc's own file storage wrote
    exc = _raises(lambda: area.read(U1, 1))
    assert "plaintext" in str(exc) and failures[-1].reason == "not-encrypted"
    legacy = EncryptedStorageArea(root / "store", envelope.FileKeyProvider(str(kek)), sync=False,
                                  plaintext_reads=True)
    assert legacy.read(U1, 1) == DICOM
    legacy.create(U2, 1, DICOM)  # new files are always encrypted
    assert envelope.is_envelope(storage_area.attachment_path(root / "store", U2).read_bytes())
    shutil.rmtree(root)


def case_bad_uuid_refused() -> None:
    root = _tmp()
    area, _, _ = _area(root)
    for bad in ("../../etc/passwd", "0A1B2C3D-0000-4000-8000-00000000ABCD", U1 + "/x", "", U1[:-1]):
        _raises(lambda bad=bad: area.read(bad, 1))
        _raises(lambda bad=bad: area.create(bad, 1, b"x"))
    shutil.rmtree(root)


def case_key_file_rules() -> None:
    root = _tmp()
    kek = root / "kek.json"
    envelope.create_key_file(str(kek))
    assert oct(kek.stat().st_mode & 0o777) == "0o600"
    _raises(lambda: envelope.create_key_file(str(kek)), EnvelopeError)  # never overwritten
    kek.chmod(0o644)
    exc = _raises(lambda: envelope.FileKeyProvider(str(kek)), EnvelopeError)
    assert "0600" in str(exc)
    kek.chmod(0o600)
    for text in ("{", "[]", '{"format": "x", "version": 1}',
                 '{"format": "pacs-bridge-storage-kek", "version": 1, "current": "a", "keys": {"a": "!!"}}',
                 '{"format": "pacs-bridge-storage-kek", "version": 1, "current": "b", "keys": {"a": "'
                 + "A" * 44 + '"}}',
                 '{"format": "pacs-bridge-storage-kek", "version": 1, "current": "a", "keys": {"a": "AAAA"}}'):
        exc = _raises(lambda text=text: envelope.parse_key_file(text, "kf"), EnvelopeError)
        assert str(exc).startswith("kf:"), exc
    shutil.rmtree(root)


def case_rewrap_keeps_body_and_new_key_reads() -> None:
    root = _tmp()
    area, failures, kek = _area(root)
    area.create(U1, 1, DICOM)
    path = storage_area.attachment_path(root / "store", U1)
    before = path.read_bytes()
    old = envelope.parse_key_file(kek.read_text(), "k")
    new = old.with_new_key()
    h = envelope.parse_header(before)
    h2 = envelope.rewrap(old, new, h, U1)
    assert h2.key_id == new.current != h.key_id and h2.body_nonce == h.body_nonce
    path.write_bytes(h2.encode() + before[h.length:])
    assert path.read_bytes()[h2.length:] == before[h.length:]  # body bytes untouched
    # the running area follows the key file: an unknown key id makes it re-read
    envelope.write_key_file(str(kek), new)
    assert area.read(U1, 1) == DICOM
    area.create(U2, 1, DICOM)
    assert envelope.parse_header(storage_area.attachment_path(root / "store", U2).read_bytes()).key_id == new.current
    # once only the new key is left, the new file still opens; a file under the dropped key does not
    envelope.write_key_file(str(kek), new.only_current())
    assert area.read(U1, 1) == DICOM
    path.write_bytes(before)
    exc = _raises(lambda: area.read(U1, 1))
    assert failures[-1].reason == "unknown-key", exc
    shutil.rmtree(root)


def case_key_file_created_only_for_a_store_without_encrypted_files() -> None:
    root = _tmp()
    kek = root / "keys" / "kek.json"
    settings = storage_area.StorageSettings(str(root / "store"), str(kek), create_key=True)
    area = storage_area.build(settings, sync=False)  # a fresh store: the key file is created (0700 dir, 0600 file)
    assert kek.exists() and oct(kek.stat().st_mode & 0o777) == "0o600"
    assert oct(kek.parent.stat().st_mode & 0o777) == "0o700"
    area.create(U1, 1, DICOM)
    kek.rename(root / "moved.json")  # the key file is gone (a mount missing), encrypted files are there
    exc = _raises(lambda: storage_area.build(settings, sync=False), EnvelopeError)
    assert "restore the key file" in str(exc) and not kek.exists()
    without_flag = storage_area.StorageSettings(str(root / "store"), str(kek))
    _raises(lambda: storage_area.build(without_flag, sync=False), EnvelopeError)  # never created without create_key
    assert not kek.exists()
    shutil.rmtree(root)


def case_failure_event_shape() -> None:
    failure = storage_area.StorageFailure("read", U1, 1, "damaged", "the encrypted body failed authentication")
    event = failure.to_event("orthanc")
    data = event.to_dict()
    assert data["type"] == "storage.integrity_failure" and data["outcome"] == 8
    assert any(o["id"] == U1 for o in data["objects"])


def _plugin_config(root: Path, kek: Path, **extra: object) -> Path:
    import json

    cfg = root / "bridge-plugin.json"
    cfg.write_text(json.dumps({"storage": {"directory": str(root / "store"), "kek_file": str(kek), **extra}}))
    return cfg


def case_rotation_rewraps_headers_only_and_drops_the_old_key() -> None:
    from bridge.pacs import storage_maintenance as sm

    root = _tmp()
    area, failures, kek = _area(root)
    uuids = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(1, 7)]
    for u in uuids:
        area.create(u, 1, DICOM + u.encode())
    old_kid = area.keys.current_key_id()
    bodies = {}
    for u in uuids:
        raw = storage_area.attachment_path(root / "store", u).read_bytes()
        bodies[u] = raw[envelope.parse_header(raw).length:]
    settings = sm.settings_from_plugin_config(_plugin_config(root, kek))
    report = sm.rotate(settings, grace_seconds=0, sync=False)
    assert report.changed == len(uuids) and not report.problems, report
    ring = envelope.parse_key_file(kek.read_text(), "k")
    assert ring.key_ids == (ring.current,) and ring.current != old_kid
    assert dict(report.by_key) == {ring.current: len(uuids)}
    for u in uuids:
        raw = storage_area.attachment_path(root / "store", u).read_bytes()
        header = envelope.parse_header(raw)
        assert header.key_id == ring.current and raw[header.length:] == bodies[u]  # body not re-encrypted
        assert area.read(u, 1) == DICOM + u.encode()  # the running area follows the key file
    area.create(U1, 1, DICOM)
    assert envelope.parse_header(storage_area.attachment_path(root / "store", U1).read_bytes()).key_id == ring.current
    assert not failures
    shutil.rmtree(root)


def case_rotation_resumes_after_an_interruption() -> None:
    from bridge.pacs import storage_maintenance as sm

    root = _tmp()
    area, _, kek = _area(root)
    for u in (U1, U2):
        area.create(u, 1, DICOM)
    old = envelope.parse_key_file(kek.read_text(), "k")
    both = old.with_new_key()
    envelope.write_key_file(str(kek), both)  # the crash came after the switch...
    assert sm.rewrap_file(storage_area.attachment_path(root / "store", U1), U1, both, sync=False)  # ...and one file
    assert area.read(U1, 1) == DICOM and area.read(U2, 1) == DICOM  # readable in between
    settings = sm.settings_from_plugin_config(_plugin_config(root, kek))
    report = sm.rotate(settings, grace_seconds=0, sync=False)
    assert report.changed == 1 and "resuming" in report.notes[0]
    ring = envelope.parse_key_file(kek.read_text(), "k")
    assert ring.key_ids == (both.current,)  # no third key: the unfinished rotation was finished
    assert area.read(U1, 1) == DICOM and area.read(U2, 1) == DICOM
    shutil.rmtree(root)


def case_rotation_keeps_old_keys_while_a_file_cannot_move() -> None:
    from bridge.pacs import storage_maintenance as sm

    root = _tmp()
    area, _, kek = _area(root)
    area.create(U1, 1, DICOM)
    area.create(U2, 1, DICOM)
    p2 = storage_area.attachment_path(root / "store", U2)
    raw = p2.read_bytes()
    p2.write_bytes(raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])  # its wrapped key is damaged
    settings = sm.settings_from_plugin_config(_plugin_config(root, kek))
    report = sm.rotate(settings, grace_seconds=0, sync=False)
    assert report.problems and report.problems[0].startswith(U2)
    assert len(envelope.parse_key_file(kek.read_text(), "k").key_ids) == 2  # old KEK kept
    assert area.read(U1, 1) == DICOM
    forced = sm.rotate(settings, grace_seconds=0, sync=False, force=True)
    assert len(envelope.parse_key_file(kek.read_text(), "k").key_ids) == 1 and forced.problems
    shutil.rmtree(root)


def case_migration_encrypts_plaintext_in_place() -> None:
    import json

    from bridge.pacs import storage_maintenance as sm

    root = _tmp()
    area, failures, kek = _area(root, plaintext_reads=True)
    u3 = "12345678-2222-4222-8222-222222222222"
    as_json = json.dumps({"0010,0010": {"Value": "PATIENT^DEMO"}}).encode()
    for uuid, data in ((U1, DICOM), (U2, as_json), (u3, b"\x01\x02 unknown kind")):
        path = storage_area.attachment_path(root / "store", uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    area.create("aaaaaaaa-3333-4333-8333-333333333333", 1, DICOM)  # already encrypted: left alone
    settings = sm.settings_from_plugin_config(_plugin_config(root, kek, plaintext_reads=True))
    before = sm.status(settings)
    assert before.plaintext == 3 and sum(before.by_key.values()) == 1
    report = sm.encrypt_plaintext(settings, sync=False)
    assert report.changed == 2 and len(report.problems) == 1 and report.problems[0].startswith(u3)
    for uuid, kind, data in ((U1, 1, DICOM), (U2, 2, as_json)):
        raw = storage_area.attachment_path(root / "store", uuid).read_bytes()
        assert envelope.is_envelope(raw) and b"PATIENT" not in raw
        assert area.read(uuid, kind) == data
    assert area.read(u3, 1) == b"\x01\x02 unknown kind"  # still plaintext, listed for the operator
    after = sm.status(settings)
    assert after.plaintext == 1 and sum(after.by_key.values()) == 3
    assert sm.encrypt_plaintext(settings, sync=False).changed == 0  # idempotent
    assert not failures
    shutil.rmtree(root)


def case_maintenance_entry_point_and_bad_settings() -> None:
    import contextlib
    import io
    import json

    from bridge.pacs import storage_maintenance as sm

    root = _tmp()
    kek = root / "kek.json"
    cfg = _plugin_config(root, kek)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert sm.main(["init-key", "--plugin-config", str(cfg)]) == 0
        assert sm.main(["status", "--plugin-config", str(cfg)]) == 0
    assert kek.exists() and json.loads(out.getvalue().split("\n}\n")[-1] or "{}") is not None
    err = io.StringIO()
    (root / "nostorage.json").write_text("{}")
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert sm.main(["status", "--plugin-config", str(root / "nostorage.json")]) == 2
        assert sm.main(["init-key", "--plugin-config", str(cfg)]) == 2  # never overwrites a KEK
    assert "no 'storage' object" in err.getvalue() and "exists already" in err.getvalue()
    shutil.rmtree(root)


def case_sealed_lines_of_the_audit_spool() -> None:
    """bridge/core/sealed.py as the plugin uses it for its audit spool: a line round-trips, is not
    readable in the file, fails when altered, under another KEK or as another kind of file."""
    from bridge.core import sealed

    ring = envelope.LocalKeyRing({"k1": b"\x07" * 32}, "k1")
    line = sealed.seal_line(ring, "plugin-audit-spool", sealed.PLUGIN_AUDIT_SPOOL, b'{"patient":"PAT-9"}')
    assert line.startswith(b"E1:") and b"PAT-9" not in line
    assert sealed.open_line(ring, "plugin-audit-spool", sealed.PLUGIN_AUDIT_SPOOL, line) == b'{"patient":"PAT-9"}'
    assert sealed.open_line(ring, "x", sealed.PLUGIN_AUDIT_SPOOL, b"{}", plaintext_ok=True) == b"{}"
    other = envelope.LocalKeyRing({"k2": b"\x08" * 32}, "k2")
    flipped = line[:-6] + (b"A" if line[-6:-5] != b"A" else b"B") + line[-5:]
    for bad in (lambda: sealed.open_line(ring, "plugin-audit-spool", sealed.PLUGIN_AUDIT_SPOOL, flipped),
                lambda: sealed.open_line(other, "plugin-audit-spool", sealed.PLUGIN_AUDIT_SPOOL, line),
                lambda: sealed.open_line(ring, "plugin-audit-spool", sealed.SYSLOG_SPOOL, line),
                lambda: sealed.open_line(ring, "plugin-audit-spool", sealed.PLUGIN_AUDIT_SPOOL, b"{}")):
        _raises(bad, EnvelopeError)


CASES: dict[str, Callable[[], None]] = {name: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


if __name__ == "__main__":  # under /usr/bin/python3 -I: run every case, print the names that passed
    import json

    passed = []
    for name, fn in CASES.items():
        fn()
        passed.append(name)
    print(json.dumps(passed))
