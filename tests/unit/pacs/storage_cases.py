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


def case_failure_event_shape() -> None:
    failure = storage_area.StorageFailure("read", U1, 1, "damaged", "the encrypted body failed authentication")
    event = failure.to_event("orthanc")
    data = event.to_dict()
    assert data["type"] == "storage.integrity_failure" and data["outcome"] == 8
    assert any(o["id"] == U1 for o in data["objects"])


CASES: dict[str, Callable[[], None]] = {name: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


if __name__ == "__main__":  # under /usr/bin/python3 -I: run every case, print the names that passed
    import json

    passed = []
    for name, fn in CASES.items():
        fn()
        passed.append(name)
    print(json.dumps(passed))
