"""The encrypted image store's unit cases, written so that two interpreters run them: the venv's
pytest (``test_storage_area.py`` collects :data:`CASES`) and Debian's ``/usr/bin/python3 -I`` with
python3-cryptography 38, importing the core and the plugin modules from a built plugin bundle (what
Orthanc runs).  Stdlib + the bundle's modules only; each case makes its own temp directory."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
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
    """Each segment of a version 2 body opens with plain AES-GCM, given the data key, the nonce and
    the associated data derived as docs/encryption.md says (written out here, not taken from the code)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    root = _tmp()
    area, _, _ = _area(root)
    plain = DICOM * 20  # ~26 KB: 7 segments of 4 KiB
    with _small_segments():
        area.create(U1, 1, plain)
    raw = storage_area.attachment_path(root / "store", U1).read_bytes()
    header = envelope.parse_header(raw)
    assert header.version == 2 and header.segment_size == 4096
    key = envelope.unwrap_key(area.keys, header, U1, 1)
    body, out, i = raw[header.length:], b"", 0
    ad = b"pacs-bridge-storage/1\x00" + U1.encode() + b"\x001"
    while body:
        piece, body = body[:4096 + 16], body[4096 + 16:]
        nonce = (int.from_bytes(header.body_nonce, "big") ^ i).to_bytes(12, "big")
        last = b"\x01" if not body else b"\x00"
        seg_ad = ad + b"\x00seg\x00" + (4096).to_bytes(4, "big") + i.to_bytes(8, "big") + last
        out += AESGCM(key).decrypt(nonce, piece, seg_ad)
        i += 1
    assert out == plain and i == 7
    shutil.rmtree(root)


GOLDEN_KEK = ("sk-golden-v1", bytes(range(32)))
#: a file written by the version 1 format (one GCM body) before version 2 existed, for U1, content
#: type 1, under GOLDEN_KEK: stores written then must keep opening
GOLDEN_V1 = base64.b64decode(
    "iVBCRQEAAQxzay1nb2xkZW4tdjEAPLqr/2SygQQylqnSOqsSzkAyBA9mv/4knlXc1jtDtH5AfykYmoAWfy2rNcMju5mHqQ3O/qE3"
    "ADGWYchqbQ/5O/X1/3sful6gXvzGsrKZxKYm18JWHFKpR2OtvwXKq4XKOoc09ufb5nK6198uLfoXEGIIeQ3dJclL7CBCc2GNyVOl"
    "Ef/B2t9qF7MuUVFdZ7ARWi8U24nf/lJYCmM3B4dhdfN9NE7+qGn1D5NILSfvITLcFsxOuVWZn067bWybRd8HCAOa0oBxOXMNnWpT"
    "1rxXe3nx0o6Oged0L955o1P12ClFNvrqA00fv2izHu5UFpElp30ZEeASeJKLTIdhrx2lMGtjbquSb4rakiCFtPA=")
GOLDEN_PLAIN = b"\0" * 128 + b"DICM" + b"written by the version 1 format (PATIENT^GOLDEN)"


def _golden_area(root: Path) -> tuple[EncryptedStorageArea, list[storage_area.StorageFailure], Path]:
    kek = root / "kek.json"
    envelope.write_key_file(str(kek), envelope.LocalKeyRing(dict([GOLDEN_KEK]), GOLDEN_KEK[0]))
    path = storage_area.attachment_path(root / "store", U1)
    path.parent.mkdir(parents=True)
    path.write_bytes(GOLDEN_V1)
    return _area(root)


def case_version_1_files_still_open_and_fail_as_before() -> None:
    root = _tmp()
    area, failures, _ = _golden_area(root)
    header = envelope.parse_header(GOLDEN_V1)
    assert header.version == 1 and header.segment_size == 0 and header.encode() == GOLDEN_V1[:header.length]
    assert area.read(U1, 1) == GOLDEN_PLAIN
    path = storage_area.attachment_path(root / "store", U1)
    for bad in (GOLDEN_V1[:-1], GOLDEN_V1 + b"\0", GOLDEN_V1[:-20] + bytes([GOLDEN_V1[-20] ^ 1]) + GOLDEN_V1[-19:],
                GOLDEN_V1[:4] + b"\x02" + GOLDEN_V1[5:]):  # a version 1 file read as version 2
        path.write_bytes(bad)
        _raises(lambda: area.read(U1, 1))
    assert {f.reason for f in failures} <= {"damaged", "truncated"} and len(failures) == 4
    path.write_bytes(GOLDEN_V1)
    area.remove(U1, 1)
    shutil.rmtree(root)


def case_rotation_rewraps_both_formats_and_keeps_each_format() -> None:
    from bridge.pacs import storage_maintenance as sm

    root = _tmp()
    area, failures, kek = _golden_area(root)
    with _small_segments():
        area.create(U2, 1, DICOM * 10)  # version 2, several segments
    paths = {u: storage_area.attachment_path(root / "store", u) for u in (U1, U2)}
    before = {u: p.read_bytes() for u, p in paths.items()}
    settings = sm.settings_from_plugin_config(_plugin_config(root, kek))
    report = sm.rotate(settings, grace_seconds=0, sync=False)
    assert report.changed == 2 and not report.problems, report
    ring = envelope.parse_key_file(kek.read_text(), "k")
    assert ring.key_ids == (ring.current,) != (GOLDEN_KEK[0],)
    for u, raw in before.items():
        old, new = envelope.parse_header(raw), envelope.parse_header(paths[u].read_bytes())
        assert (new.version, new.segment_size, new.body_nonce) == (old.version, old.segment_size, old.body_nonce)
        assert new.key_id == ring.current and paths[u].read_bytes()[new.length:] == raw[old.length:]
    assert area.read(U1, 1) == GOLDEN_PLAIN and area.read(U2, 1) == DICOM * 10
    assert not failures
    shutil.rmtree(root)


class _small_segments:
    """Version 2 segments of 4 KiB, on the helper threads from any size (as a large file would be)."""

    def __enter__(self) -> None:
        self.saved = envelope.SINGLE_SEGMENT, envelope.SEGMENT_TARGET, envelope.PARALLEL_MIN
        envelope.SINGLE_SEGMENT, envelope.SEGMENT_TARGET, envelope.PARALLEL_MIN = 4096, 4096, 0

    def __exit__(self, *exc: object) -> None:
        envelope.SINGLE_SEGMENT, envelope.SEGMENT_TARGET, envelope.PARALLEL_MIN = self.saved


def _segment_variants(good: bytes) -> dict[str, bytes]:
    """Files made of ``good``'s own pieces: its segments moved, repeated, dropped or cut."""
    header = envelope.parse_header(good)
    step = header.segment_size + envelope.TAG_BYTES
    head, body = good[:header.length], good[header.length:]
    segs = [body[i:i + step] for i in range(0, len(body), step)]
    assert len(segs) >= 5, len(segs)

    def join(parts: list[bytes]) -> bytes:
        return head + b"".join(parts)

    def with_size(size: int) -> bytes:
        return good[:header.length - 4] + size.to_bytes(4, "big") + body

    flipped_tag = bytearray(segs[1])
    flipped_tag[-1] ^= 1
    return {
        "first two swapped": join([segs[1], segs[0], *segs[2:]]),
        "middle two swapped": join([*segs[:2], segs[3], segs[2], *segs[4:]]),
        "a segment repeated over the next": join([*segs[:2], segs[1], *segs[3:]]),
        "a segment repeated in between": join([*segs[:2], segs[1], *segs[2:]]),
        "first dropped": join(segs[1:]),
        "middle dropped": join([*segs[:2], *segs[3:]]),
        "last dropped (cut at a segment boundary)": join(segs[:-1]),
        "cut to one segment": join(segs[:1]),
        "the last segment appended again": join([*segs, segs[-1]]),
        "a full segment appended": join([*segs, segs[0]]),
        "cut inside the last tag": join(segs)[:-5],
        "only a tag left of the last segment": join([*segs[:-1], segs[-1][-16:]]),
        "a tag bit flipped in a middle segment": join([segs[0], bytes(flipped_tag), *segs[2:]]),
        "segment size doubled": with_size(header.segment_size * 2),
        "segment size one less": with_size(header.segment_size - 1),
        "segment size zero": with_size(0),
        "segment size beyond the limit": with_size(envelope.MAX_SEGMENT + 1),
    }


def case_segments_cannot_be_reordered_dropped_repeated_or_cut() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    plain = DICOM * 20
    with _small_segments():
        area.create(U1, 1, plain)
        path = storage_area.attachment_path(root / "store", U1)
        good = path.read_bytes()
        variants = _segment_variants(good)
        for name, data in variants.items():
            path.write_bytes(data)
            exc = _raises(lambda: area.read(U1, 1))
            assert "DICM" not in str(exc) and "PATIENT" not in str(exc), name
        assert len(failures) == len(variants)
        assert {f.reason for f in failures} <= {"damaged", "truncated"}, {f.reason for f in failures}
        path.write_bytes(good)
        assert area.read(U1, 1) == plain
    shutil.rmtree(root)


def case_swapped_segmented_files_fail() -> None:
    root = _tmp()
    area, failures, _ = _area(root)
    with _small_segments():
        area.create(U1, 1, DICOM * 20)
        area.create(U2, 1, DICOM * 20)  # same content, same size: only the binding tells them apart
        p1, p2 = (storage_area.attachment_path(root / "store", u) for u in (U1, U2))
        a, b = p1.read_bytes(), p2.read_bytes()
        p1.write_bytes(b)
        p2.write_bytes(a)
        for uuid in (U1, U2):
            _raises(lambda uuid=uuid: area.read(uuid, 1))
        # one segment of the other file (same key id, same index, same size) does not pass either
        header = envelope.parse_header(a)
        step = header.segment_size + envelope.TAG_BYTES
        one, two = header.length + step, header.length + 2 * step
        mixed = a[:one] + b[one:two] + a[two:]
        p1.write_bytes(mixed)
        _raises(lambda: area.read(U1, 1))
    assert [f.reason for f in failures] == ["damaged"] * 3
    shutil.rmtree(root)


def case_parallel_and_serial_opening_agree() -> None:
    from bridge.core import crypto_workers

    ring = envelope.LocalKeyRing({"k1": b"\x05" * 32}, "k1")
    plain = os.urandom(50_000)
    with _small_segments():
        header, body = envelope.seal(ring, U1, 1, plain, helpers=crypto_workers.Helpers(2))
        parsed = envelope.parse_header(header)
        results = [envelope.open_body(ring, parsed, U1, 1, bytes(body), helpers=crypto_workers.Helpers(n))
                   for n in (0, 1, 3)]
        assert all(r == plain and type(r) is bytes for r in results)
        assert results[0] is not results[1]
        damaged = bytearray(body)
        damaged[-100] ^= 1  # the last segment: a helper's or the caller's, either way refused
        for n in (0, 2):
            _raises(lambda n=n: envelope.open_body(ring, parsed, U1, 1, bytes(damaged),
                                                   helpers=crypto_workers.Helpers(n)), EnvelopeError)


def case_plaintext_is_a_new_bytes_object_of_its_own() -> None:
    ring = envelope.LocalKeyRing({"k1": b"\x05" * 32}, "k1")
    for plain in (b"", b"x", b"ab", os.urandom(100), os.urandom(8192), os.urandom(300_000)):
        header, body = envelope.seal(ring, U1, 1, plain)
        parsed = envelope.parse_header(header)
        a = envelope.open_body(ring, parsed, U1, 1, bytes(body))
        b = envelope.open_body(ring, parsed, U1, 1, bytes(body))
        assert type(a) is bytes and a == plain == b and hash(a) == hash(bytes(plain))
        if len(plain) > 1:
            assert a is not b  # never a shared object: each read wrote its own
    # the very bytes objects handed out stay as they were when later reads reuse the buffers
    header, body = envelope.seal(ring, U1, 1, b"first" * 2000)
    first = envelope.open_body(ring, envelope.parse_header(header), U1, 1, bytes(body))
    header2, body2 = envelope.seal(ring, U1, 1, b"other" * 2000)
    envelope.open_body(ring, envelope.parse_header(header2), U1, 1, bytes(body2))
    assert first == b"first" * 2000


def case_plaintexts_of_many_sizes_make_no_new_types() -> None:
    """A read of each size must not leave a type behind (a ctypes array type per size did: 8 µs
    and a garbage-collected type per read of a new size)."""
    import gc

    ring = envelope.LocalKeyRing({"k1": b"\x05" * 32}, "k1")
    header, body = envelope.seal(ring, U1, 1, b"x" * 5000)
    parsed = envelope.parse_header(header)
    envelope.open_body(ring, parsed, U1, 1, bytes(body))
    gc.disable()
    try:
        before = sum(1 for o in gc.get_objects() if isinstance(o, type))
        for n in range(5000, 5300):
            if envelope._ALLOCATE is not None:
                obj, view = envelope._ALLOCATE(n)
                view[:1] = b"y"
                view.release()
                assert type(obj) is bytes and len(obj) == n and obj[:1] == b"y"
        after = sum(1 for o in gc.get_objects() if isinstance(o, type))
    finally:
        gc.enable()
    assert after - before < 5, after - before


def case_a_cipher_that_returns_fewer_bytes_is_an_error() -> None:
    class Short:
        def update_into(self, data: object, out: object) -> int:
            return 3

        def update(self, data: bytes) -> bytes:
            return b""

    for size, room in ((100, 200), (100, 100)):
        _raises(lambda size=size, room=room: envelope._update_into(
            Short(), memoryview(bytes(size)), memoryview(bytearray(room))), EnvelopeError)


def case_both_gcm_implementations_agree_both_ways() -> None:
    """The OpenSSL-bindings path (Debian's cryptography 38, what the plugin runs) and the public API
    (any version) write the same bytes and open each other's; a bad tag is InvalidTag and leaves
    OpenSSL's error queue clean for cryptography's next call.  Under the venv's cryptography there
    are no bindings: only the public path is checked there (and the module picked it)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    impls: list[object] = [envelope._PublicGCM()]
    try:
        impls.append(envelope._OpenSSLGCM())
    except ImportError:
        assert envelope.GCM.name == "cryptography"
    else:
        assert envelope.GCM.name == "openssl-bindings"
    key, nonce, aad = os.urandom(32), os.urandom(12), b"ad"
    for size in (0, 1, 15, 16, 17, 1000, 70_000):
        data = os.urandom(size)
        sealed = []
        for impl in impls:
            out = bytearray(size + 16)
            impl.seal_into(key, nonce, aad, memoryview(data), memoryview(out))  # type: ignore[attr-defined]
            sealed.append(bytes(out))
        assert len(set(sealed)) == 1 and sealed[0] == AESGCM(key).encrypt(nonce, data, aad)
        for impl in impls:
            back = bytearray(size)
            impl.open_into(key, nonce, aad, memoryview(sealed[0]), memoryview(back))  # type: ignore[attr-defined]
            assert back == data
            bad = bytearray(sealed[0])
            bad[-1] ^= 1
            _raises(lambda impl=impl, bad=bad, size=size: impl.open_into(  # type: ignore[attr-defined]
                key, nonce, aad, memoryview(bytes(bad)), memoryview(bytearray(size))), InvalidTag)
            _raises(lambda impl=impl, good=sealed[0], size=size: impl.open_into(  # type: ignore[attr-defined]
                key, nonce, b"other", memoryview(good), memoryview(bytearray(size))), InvalidTag)
            assert AESGCM(key).decrypt(nonce, sealed[0], aad) == data  # cryptography still fine after
    for impl in impls[1:]:
        _raises(lambda impl=impl: impl.open_into(  # type: ignore[attr-defined]
            key[:16], nonce, aad, memoryview(bytes(16)), memoryview(bytearray(0))), EnvelopeError)


def case_data_key_cache_is_bounded_aged_and_follows_the_key_file() -> None:
    cache = envelope.DataKeyCache(size=2, max_age=600)
    for i in range(3):
        cache.put("k", bytes([i]), b"ctx", bytes([i]) * 32)
    assert cache.get("k", b"\x00", b"ctx") is None and len(cache) == 2  # the oldest went
    assert cache.get("k", b"\x01", b"ctx") == b"\x01" * 32
    assert cache.get("k", b"\x01", b"other ctx") is None and cache.get("k2", b"\x01", b"ctx") is None
    aged = envelope.DataKeyCache(size=2, max_age=0)
    aged.put("k", b"w", b"ctx", b"k" * 32)
    time.sleep(0.01)
    assert aged.get("k", b"w", b"ctx") is None

    root = _tmp()
    area, failures, kek = _area(root)
    area.create(U1, 1, DICOM)
    keys = area.keys
    assert isinstance(keys, envelope.FileKeyProvider) and len(keys.cache) == 1  # the new file's key, kept
    assert area.read(U1, 1) == DICOM
    old = envelope.parse_key_file(kek.read_text(), "k")
    envelope.write_key_file(str(kek), old.with_new_key())  # the key file changed: nothing cached counts
    assert area.read(U1, 1) == DICOM and len(keys.cache) == 1  # unwrapped again, cached again
    other = envelope.LocalKeyRing.with_new_key(old).only_current()
    envelope.write_key_file(str(kek), other)  # the file's KEK dropped: its cached key must not open it
    exc = _raises(lambda: area.read(U1, 1))
    assert failures[-1].reason == "unknown-key", exc
    shutil.rmtree(root)


def case_crypto_helpers_run_each_task_once_and_never_wait_for_a_busy_helper() -> None:
    import threading

    from bridge.core import crypto_workers

    helpers = crypto_workers.Helpers(1)
    ran: list[int] = []
    helpers.run([lambda i=i: ran.append(i) for i in range(50)])
    assert sorted(ran) == list(range(50))
    # an error: raised once every task has finished or been skipped
    started, finished = [], []

    def slow(i: int) -> None:
        started.append(i)
        time.sleep(0.002)
        finished.append(i)

    def boom() -> None:
        raise ValueError("segment 3")

    tasks = [lambda i=i: slow(i) for i in range(3)] + [boom] + [lambda i=i: slow(i) for i in range(4, 8)]
    exc = _raises(lambda: helpers.run(tasks), ValueError)
    assert str(exc) == "segment 3" and sorted(started) == sorted(finished)
    # the helper stuck in another caller's job: this caller does all of its own tasks meanwhile
    gate = threading.Event()
    blocker = threading.Thread(target=helpers.run, args=([gate.wait, gate.wait],))
    blocker.start()
    time.sleep(0.05)
    done: list[str] = []
    helpers.run([lambda i=i: done.append(threading.current_thread().name) for i in range(6)])
    assert len(done) == 6
    gate.set()
    blocker.join(5)
    assert not blocker.is_alive()
    inline: list[int] = []
    crypto_workers.Helpers(0).run([lambda: inline.append(1)] * 3)
    assert inline == [1, 1, 1]


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
        "unknown version": good[:4] + b"\x09" + good[5:],
        "read as version 1": good[:4] + b"\x01" + good[5:],
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
