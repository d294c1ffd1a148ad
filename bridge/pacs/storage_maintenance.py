"""Maintenance of the encrypted image store while Orthanc runs: KEK rotation, plaintext migration, status.

These run on the Orthanc host, never inside Orthanc, and never on the bridge host (the storage
KEK stays where the images are).  Two ways to call them, same code:

* ``pacs-bridge keys rotate-storage`` / ``pacs-bridge storage encrypt-plaintext|status``
  (bridge/deploy/storage_cli.py) where the bridge's package is installed;
* ``/usr/bin/python3 -m bridge.pacs.storage_maintenance rotate|encrypt-plaintext|status`` with
  the plugin bundle's library folder on ``PYTHONPATH``: the Orthanc host or container has Debian's
  Python and the bundle, nothing else (stdlib + the core only, like the plugin).

Both ways read the ``storage`` object of the plugin's configuration file (directory, KEK file).

**Rotation** (:func:`rotate`): a new KEK is added to the key file and made current (the old ones
stay readable), then every file's data key is re-wrapped under it: the header is rewritten into a
temp file with the body copied unchanged (no re-encryption), and renamed over the original only
if the original is still the same file (Orthanc did not delete it meanwhile).  Orthanc notices the
new key file at its next storage call (a ``stat`` per call), so new files use the new KEK; a pass
is repeated until it finds nothing left under an old KEK (a write that started before the switch),
and only then are the old KEKs dropped from the key file.  Interrupted at any point: every file is
readable (under the old or the new KEK, both in the file); run it again to finish.

**Migration** (:func:`encrypt_plaintext`): the files of Orthanc's own (plaintext) file storage are
encrypted in place, one atomic rename each, while Orthanc reads the rest as plaintext
(``storage.plaintext_reads: true``).  A plaintext file's content type is recognised from its
content (a DICOM file: ``DICM`` at offset 128; DICOM-as-JSON: a JSON object); anything else is left
alone and listed (e.g. Orthanc's ``StorageCompression``, whose zlib files do not say their type).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.core import envelope
from bridge.core.envelope import EnvelopeError, LocalKeyRing
from bridge.pacs import storage_area
from bridge.pacs.storage_area import TMP_PREFIX, StorageSettings, attachments

#: how long a rotation waits after switching the current KEK before its last pass: longer than
#: one attachment write that may have read the old key file just before the switch
GRACE_SECONDS = 5.0
MAX_PASSES = 5


class MaintenanceError(Exception):
    """Something the operator must fix (bad plugin config, key file...): the message says what."""


def settings_from_plugin_config(path: str | Path) -> StorageSettings:
    """The ``storage`` object of the plugin's JSON configuration file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MaintenanceError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise MaintenanceError(f"{path}: not valid JSON ({exc})") from None
    raw = storage_area.storage_section(data if isinstance(data, dict) else {})
    if raw is None:
        raise MaintenanceError(f"{path}: no '{storage_area.SETTINGS_KEY}' object (encrypted storage not configured)")
    try:
        return StorageSettings.from_mapping(raw, str(path))
    except storage_area.StorageConfigError as exc:
        raise MaintenanceError(str(exc)) from None


@dataclass
class Report:
    """What a run found and did; ``problems`` lists files (uuid: why) the operator must look at."""

    by_key: Counter[str] = field(default_factory=Counter)
    plaintext: int = 0
    changed: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"encrypted_by_key": dict(self.by_key), "plaintext": self.plaintext, "changed": self.changed,
                "problems": self.problems, "notes": self.notes}


def _replace_if_same(path: Path, ino: int, pieces: Callable[[int], None], sync: bool) -> bool:
    """Write a new version of ``path`` through ``pieces(fd)`` into a temp file, and rename it over
    ``path`` only if ``path`` is still inode ``ino`` (Orthanc may have removed the attachment)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            pieces(fd)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            same = os.stat(path).st_ino == ino
        except FileNotFoundError:
            same = False
        if same:
            os.replace(tmp, path)
            return True
        os.unlink(tmp)
        return False
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def rewrap_file(path: Path, uuid: str, ring: LocalKeyRing, *, sync: bool = True) -> bool:
    """Re-wrap one file's data key under ``ring``'s current KEK (body bytes copied unchanged).
    False when the file needs nothing (already current, plaintext, gone)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - held open across the rewrite below
    except FileNotFoundError:
        return False
    with fh:
        ino = os.fstat(fh.fileno()).st_ino
        header, _ = envelope.read_header(fh)
        if header is None or header.key_id == ring.current:
            return False
        new_header = envelope.rewrap(ring, ring, header, uuid)

        def pieces(fd: int) -> None:
            _write_all(fd, new_header.encode())
            with os.fdopen(os.dup(fd), "wb", closefd=True) as out:
                shutil.copyfileobj(fh, out, 1 << 20)

        return _replace_if_same(path, ino, pieces, sync)


def status(settings: StorageSettings) -> Report:
    """Count files per KEK id and plaintext files (headers only: no key needed, nothing decrypted)."""
    report = Report()
    for uuid, path in attachments(settings.directory):
        try:
            with open(path, "rb") as fh:
                header, _ = envelope.read_header(fh)
        except (OSError, EnvelopeError) as exc:
            report.problems.append(f"{uuid}: {exc}")
            continue
        if header is None:
            report.plaintext += 1
        else:
            report.by_key[header.key_id] += 1
    return report


def rotate(settings: StorageSettings, *, grace_seconds: float = GRACE_SECONDS, sync: bool = True,
           force: bool = False, say: Callable[[str], None] = lambda _m: None) -> Report:
    """Rotate the storage KEK (see the module docstring).  Old KEKs are dropped only when no file
    is left under them, or with ``force`` (files still under them then cannot be read: listed)."""
    try:
        ring, _ = envelope.read_key_file(settings.kek_file)
    except EnvelopeError as exc:
        raise MaintenanceError(str(exc)) from None
    report = Report()
    if len(ring.key_ids) > 1:
        report.notes.append(f"resuming an unfinished rotation to {ring.current}")
    else:
        ring = ring.with_new_key()
        envelope.write_key_file(settings.kek_file, ring)
        report.notes.append(f"new storage KEK {ring.current} written to {settings.kek_file}")
    say(report.notes[-1])
    time.sleep(grace_seconds)  # writes that read the old key file just before the switch finish meanwhile
    for number in range(1, MAX_PASSES + 1):
        report.problems.clear()
        changed = _rewrap_pass(settings, ring, report, sync)
        report.changed += changed
        say(f"pass {number}: {changed} file(s) re-wrapped under {ring.current}")
        if changed == 0:
            break
    left = status(settings)
    stale = {kid: n for kid, n in left.by_key.items() if kid != ring.current}
    report.by_key, report.plaintext = left.by_key, left.plaintext
    if stale and not force:
        report.notes.append(f"old KEK(s) kept: files still under them {stale}; fix the files listed in problems "
                            "(or delete their attachments in Orthanc) and run again, or use --force")
        return report
    envelope.write_key_file(settings.kek_file, ring.only_current())
    report.notes.append(f"rotation complete: only {ring.current} is left in {settings.kek_file}")
    say(report.notes[-1])
    return report


def _rewrap_pass(settings: StorageSettings, ring: LocalKeyRing, report: Report, sync: bool) -> int:
    changed = 0
    for uuid, path in attachments(settings.directory):
        try:
            changed += rewrap_file(path, uuid, ring, sync=sync)
        except (OSError, EnvelopeError) as exc:
            report.problems.append(f"{uuid}: {exc}")
    return changed


def guess_content_type(data: bytes) -> int | None:
    """Orthanc's content type of a plaintext attachment from its bytes, or None (not recognised)."""
    if data[128:132] == b"DICM":
        return 1
    head = data.lstrip()[:1]
    if head == b"{":
        try:
            if isinstance(json.loads(data), dict):
                return 2
        except ValueError:
            return None
    return None


def encrypt_plaintext(settings: StorageSettings, *, sync: bool = True,
                      say: Callable[[str], None] = lambda _m: None) -> Report:
    """Encrypt every plaintext attachment file in place (see the module docstring)."""
    try:
        keys = envelope.FileKeyProvider(settings.kek_file)
    except EnvelopeError as exc:
        raise MaintenanceError(str(exc)) from None
    report = Report()
    for uuid, path in attachments(settings.directory):
        try:
            with open(path, "rb") as fh:
                ino = os.fstat(fh.fileno()).st_ino
                header, prefix = envelope.read_header(fh)
                if header is not None:
                    report.by_key[header.key_id] += 1
                    continue
                data = prefix + fh.read()
            content_type = guess_content_type(data)
            if content_type is None:
                report.plaintext += 1
                report.problems.append(f"{uuid}: plaintext of an unrecognised kind (not DICOM, not JSON): left as is")
                continue
            sealed = envelope.seal(keys, uuid, content_type, data)

            def pieces(fd: int, sealed: tuple[bytes, memoryview] = sealed) -> None:
                for piece in sealed:
                    _write_all(fd, piece)

            if _replace_if_same(path, ino, pieces, sync):
                report.changed += 1
                report.by_key[keys.ring.current] += 1
        except (OSError, EnvelopeError) as exc:
            report.problems.append(f"{uuid}: {exc}")
    say(f"{report.changed} plaintext file(s) encrypted, {len(report.problems)} problem(s)")
    if not report.problems:
        report.notes.append("no plaintext left: set storage.plaintext_reads to false and restart Orthanc")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python3 -m bridge.pacs.storage_maintenance`` (the Orthanc host's Python and the bundle)."""
    parser = argparse.ArgumentParser(prog="storage_maintenance", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("status", "rotate", "encrypt-plaintext", "init-key"))
    parser.add_argument("--plugin-config", required=True, help="the bridge plugin's JSON configuration file")
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS, help="rotate: seconds between switch and pass")
    parser.add_argument("--force", action="store_true", help="rotate: drop old KEKs even if files remain under them")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        settings = settings_from_plugin_config(args.plugin_config)
        if args.command == "init-key":
            envelope.create_key_file(settings.kek_file)
            report = Report(notes=[f"new storage key file {settings.kek_file}"])
        elif args.command == "status":
            report = status(settings)
        elif args.command == "rotate":
            report = rotate(settings, grace_seconds=args.grace, force=args.force, say=say)
        else:
            report = encrypt_plaintext(settings, say=say)
    except (MaintenanceError, EnvelopeError) as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2))
    return 1 if report.problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
