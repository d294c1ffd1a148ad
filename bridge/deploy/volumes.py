"""Is this path on an encrypted block device?  For the Orthanc data the storage area cannot cover.

Orthanc's index (its SQLite file, or PostgreSQL's data directory), its temporary directory and the
web viewer's cache hold patient names, IDs and decoded images in clear: the encrypted storage area
(bridge/pacs/storage_area.py) only sees attachments.  The supported setup is to keep them on a
dm-crypt (LUKS or plain) volume, directly or under LVM; docs/encryption.md.  This module checks it,
for ``pacs-bridge check-config --orthanc-config`` and for the compliance report
(:func:`orthanc_paths`), from Linux's own bookkeeping:

1. ``/proc/self/mountinfo``: the mount holding the path (longest mount point that is a prefix of
   it), its device number ``major:minor``, file system type and source;
2. ``/sys/dev/block/<major:minor>``: the block device; a device-mapper device has ``dm/uuid``,
   which starts with ``CRYPT-`` for dm-crypt (``CRYPT-LUKS2-...``, ``CRYPT-PLAIN-...``);
3. a device-mapper device that is not dm-crypt itself (an LVM volume) is encrypted when every
   device under it (``slaves/``) is, recursively.

A file system without a block device of its own (major 0: btrfs subvolumes, overlay) is judged by
its mount source when that is a ``/dev/`` path; ``tmpfs``/``ramfs`` are memory (nothing written to
disk unless swapped); anything else is "unknown", never "encrypted".  ``proc_root``/``sys_root``
and ``dev_of`` let the unit tests run this on fake trees.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENCRYPTED, NOT_ENCRYPTED, MEMORY, UNKNOWN = "encrypted", "not-encrypted", "memory", "unknown"
_MEMORY_FS = {"tmpfs", "ramfs"}
_FS_ENCRYPTION = {"ecryptfs"}
#: the Orthanc Web Viewer plugin's cache when its CachePath is not set (what is checked, not created)
VIEWER_DEFAULT_CACHE = "/tmp/OrthancWebViewerCache"  # noqa: S108


@dataclass(frozen=True)
class Volume:
    """Where ``path`` lives and whether that is encrypted (``state``: one of the four constants)."""

    path: str
    state: str
    mount_point: str | None = None
    fs_type: str | None = None
    source: str | None = None
    detail: str = ""

    @property
    def encrypted(self) -> bool:
        return self.state == ENCRYPTED


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Mount:
    device: str
    mount_point: str
    fs_type: str
    source: str


def _mounts(proc_root: str) -> list[_Mount]:
    out = []
    with open(os.path.join(proc_root, "self", "mountinfo"), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            left, sep, right = line.rstrip("\n").partition(" - ")
            parts, tail = left.split(" "), right.split(" ")
            if not sep or len(parts) < 5 or len(tail) < 2:
                continue
            out.append(_Mount(parts[2], _unescape(parts[4]), tail[0], _unescape(tail[1])))
    return out


def _mount_of(path: str, mounts: list[_Mount]) -> _Mount | None:
    best: _Mount | None = None
    for m in mounts:  # later lines are mounted later: on a tie the later one hides the earlier
        mp = m.mount_point.rstrip("/") or "/"
        inside = path == mp or path.startswith(mp + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    return best


def _block_state(device: str, sys_root: str, seen: frozenset[str] = frozenset()) -> tuple[str, str]:
    """(state, detail) of block device ``major:minor`` from sysfs."""
    if device in seen:
        return UNKNOWN, "device loop in sysfs"
    link = os.path.join(sys_root, "dev", "block", device)
    if not os.path.exists(link):
        return UNKNOWN, f"no {link}"
    real = os.path.realpath(link)
    name = os.path.basename(real)
    uuid = _read(os.path.join(real, "dm", "uuid"))
    if uuid is not None and uuid.startswith("CRYPT-"):
        dm_name = _read(os.path.join(real, "dm", "name")) or name
        kind = uuid.split("-")[1] if uuid.count("-") >= 2 else "?"
        return ENCRYPTED, f"dm-crypt {kind} ({dm_name}, {name})"
    slaves_dir = os.path.join(real, "slaves")
    slaves = sorted(os.listdir(slaves_dir)) if os.path.isdir(slaves_dir) else []
    if uuid is not None and slaves:
        states = []
        for slave in slaves:
            dev = _read(os.path.join(slaves_dir, slave, "dev"))
            if dev is None:
                return UNKNOWN, f"{name}: cannot read {slave}'s device number"
            states.append(_block_state(dev, sys_root, seen | {device}))
        if all(s == ENCRYPTED for s, _ in states):
            return ENCRYPTED, f"{name} ({uuid.split('-')[0]}) on " + "; ".join(d for _, d in states)
        plain = [d for s, d in states if s != ENCRYPTED]
        return NOT_ENCRYPTED, f"{name} ({uuid.split('-')[0]}) on a device that is not dm-crypt: {plain[0]}"
    return NOT_ENCRYPTED, f"{name}: a plain block device (no dm-crypt)"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _dev_of(path: str) -> str | None:
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        return None
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def volume_of(path: str | Path, *, proc_root: str = "/proc", sys_root: str = "/sys",
              dev_of: Callable[[str], str | None] = _dev_of) -> Volume:
    """Whether ``path`` (or, if it does not exist yet, its nearest existing parent) is on an
    encrypted block device."""
    target = os.path.abspath(str(path))
    existing, tail = target, ""
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing, tail = os.path.dirname(existing), os.path.join(os.path.basename(existing), tail)
    probe = os.path.join(os.path.realpath(existing), tail).rstrip("/") or "/"  # symlinks resolved
    try:
        mount = _mount_of(probe, _mounts(proc_root))
    except OSError as exc:
        return Volume(target, UNKNOWN, detail=f"cannot read mountinfo: {exc.strerror}")
    if mount is None:
        return Volume(target, UNKNOWN, detail="no mount found")
    base = {"mount_point": mount.mount_point, "fs_type": mount.fs_type, "source": mount.source}
    if mount.fs_type in _MEMORY_FS:
        return Volume(target, MEMORY, **base, detail=f"{mount.fs_type}: memory (on disk only if swapped: "
                                                     "encrypt the swap)")
    if mount.fs_type in _FS_ENCRYPTION:
        return Volume(target, ENCRYPTED, **base, detail=f"{mount.fs_type} (file system encryption)")
    device = mount.device
    if device.startswith("0:"):
        source_dev = dev_of(mount.source) if mount.source.startswith("/dev/") else None
        if source_dev is None:
            return Volume(target, UNKNOWN, **base, detail=f"{mount.fs_type} has no block device of its own "
                                                          f"(source {mount.source})")
        device = source_dev
    state, detail = _block_state(device, sys_root)
    return Volume(target, state, **base, detail=detail)


@dataclass(frozen=True)
class PathCheck:
    """One Orthanc path with patient data outside the encrypted storage area, and its volume."""

    role: str
    volume: Volume
    note: str = ""


def orthanc_paths(config: Mapping[str, Any], *, encrypted_storage: bool) -> list[tuple[str, str, str]]:
    """(role, path, note) of the places where Orthanc ``config`` keeps patient data on disk that the
    storage area does not encrypt: the index, the temporary directory, the web viewer's cache, and
    the storage itself when ``encrypted_storage`` is off (Orthanc's defaults applied)."""
    storage = str(config.get("StorageDirectory", "OrthancStorage"))
    out = []
    postgres = config.get("PostgreSQL") if isinstance(config.get("PostgreSQL"), Mapping) else {}
    if postgres.get("EnableIndex"):
        out.append(("orthanc index", "", "on PostgreSQL: check the database server's data directory"))
    else:
        out.append(("orthanc index", str(config.get("IndexDirectory", storage)), "SQLite: patient names, IDs"))
    out.append(("orthanc temporary directory", str(config.get("TemporaryDirectory") or tempfile.gettempdir()),
                "uploads and archives being built"))
    viewer = config.get("WebViewer") if isinstance(config.get("WebViewer"), Mapping) else None
    if viewer is not None or any("WebViewer" in str(p) for p in config.get("Plugins", [])):
        out.append(("web viewer cache", str((viewer or {}).get("CachePath", VIEWER_DEFAULT_CACHE)),
                    "decoded images"))
    if not encrypted_storage:
        out.append(("orthanc storage (not encrypted by the plugin)", storage, "every DICOM file"))
    return out


def check_orthanc(config: Mapping[str, Any], *, encrypted_storage: bool, **probe: Any) -> list[PathCheck]:
    """:func:`orthanc_paths` with each path's :func:`volume_of` (what the compliance report lists)."""
    checks = []
    for role, path, note in orthanc_paths(config, encrypted_storage=encrypted_storage):
        volume = volume_of(path, **probe) if path else Volume(path, UNKNOWN, detail=note)
        checks.append(PathCheck(role, volume, note))
    return checks
