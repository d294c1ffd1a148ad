"""Encrypted-volume detection (bridge/deploy/volumes.py) on fake /proc and /sys trees: LUKS, plain
dm-crypt, LVM on LUKS, LVM on a plain disk, a partition, tmpfs, btrfs (major 0) through its source,
overlay, an escaped mount point, nested mounts, a path that does not exist yet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.deploy import volumes as v

MOUNTINFO = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 21 253:0 / /srv/crypt rw shared:2 - ext4 /dev/mapper/luks-abc rw
31 21 253:2 / /srv/lvm-on-luks rw shared:3 - xfs /dev/mapper/vg-data rw
32 21 253:3 / /srv/lvm-plain rw shared:4 - xfs /dev/mapper/vg2-data rw
33 21 0:40 / /tmp rw shared:5 - tmpfs tmpfs rw
34 21 0:41 / /srv/btrfs rw shared:6 - btrfs /dev/mapper/luks-abc rw
35 21 0:42 / /var/lib/docker/x rw shared:7 - overlay overlay rw,lowerdir=/a
36 30 8:1 / /srv/crypt/plain\\040inside rw shared:8 - ext4 /dev/sda1 rw
37 21 253:5 / /srv/plaincrypt rw shared:9 - ext4 /dev/mapper/p rw
"""


def _dev(sysfs: Path, name: str, number: str, *, dm_uuid: str | None = None, dm_name: str | None = None,
         slaves: dict[str, str] | None = None) -> None:
    d = sysfs / "devices" / "virtual" / "block" / name
    d.mkdir(parents=True)
    (d / "dev").write_text(number + "\n")
    if dm_uuid is not None:
        (d / "dm").mkdir()
        (d / "dm" / "uuid").write_text(dm_uuid + "\n")
        (d / "dm" / "name").write_text((dm_name or name) + "\n")
    if slaves:
        (d / "slaves").mkdir()
        for slave, target in slaves.items():
            os.symlink(sysfs / "devices" / "virtual" / "block" / target, d / "slaves" / slave)
    (sysfs / "dev" / "block").mkdir(parents=True, exist_ok=True)
    os.symlink(d, sysfs / "dev" / "block" / number)


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, object]:
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(MOUNTINFO)
    _dev(sysfs, "sda1", "8:1")
    _dev(sysfs, "dm-0", "253:0", dm_uuid="CRYPT-LUKS2-0123abcd-luks-abc", dm_name="luks-abc")
    _dev(sysfs, "dm-1", "253:1", dm_uuid="CRYPT-LUKS2-4567-luks-pv")
    _dev(sysfs, "dm-2", "253:2", dm_uuid="LVM-abcdef", dm_name="vg-data", slaves={"dm-1": "dm-1"})
    _dev(sysfs, "dm-3", "253:3", dm_uuid="LVM-123456", dm_name="vg2-data", slaves={"sda1": "sda1"})
    _dev(sysfs, "dm-5", "253:5", dm_uuid="CRYPT-PLAIN-p", dm_name="p")
    return {"proc_root": str(proc), "sys_root": str(sysfs), "dev_of": {"/dev/mapper/luks-abc": "253:0"}.get}


@pytest.mark.parametrize(("path", "state", "words"), [
    ("/srv/crypt/orthanc/index", v.ENCRYPTED, "LUKS2"),
    ("/srv/plaincrypt/x", v.ENCRYPTED, "PLAIN"),
    ("/srv/lvm-on-luks/db", v.ENCRYPTED, "LVM"),
    ("/srv/lvm-plain/db", v.NOT_ENCRYPTED, "not dm-crypt"),
    ("/var/lib/orthanc", v.NOT_ENCRYPTED, "plain block device"),
    ("/tmp/OrthancWebViewerCache", v.MEMORY, "swap"),
    ("/srv/btrfs/sub", v.ENCRYPTED, "luks-abc"),
    ("/var/lib/docker/x/data", v.UNKNOWN, "no block device"),
    ("/srv/crypt/plain inside/db", v.NOT_ENCRYPTED, "plain"),  # a plain disk mounted inside the LUKS one
    ("/srv/cryptic", v.NOT_ENCRYPTED, "plain"),  # a prefix of the name is not the mount point
])
def test_volume_states(trees: dict[str, object], path: str, state: str, words: str) -> None:
    vol = v.volume_of(path, **trees)  # type: ignore[arg-type]
    assert vol.state == state, vol
    assert words in vol.detail, vol


def test_a_missing_sysfs_entry_is_unknown_not_encrypted(trees: dict[str, object], tmp_path: Path) -> None:
    (tmp_path / "proc" / "self" / "mountinfo").write_text("40 1 9:9 / / rw - ext4 /dev/md9 rw\n")
    assert v.volume_of("/x", **trees).state == v.UNKNOWN  # type: ignore[arg-type]
    (tmp_path / "proc" / "self" / "mountinfo").write_text("garbage\n")
    assert v.volume_of("/x", **trees).state == v.UNKNOWN  # type: ignore[arg-type]


def test_orthanc_paths_defaults_and_postgres() -> None:
    paths = dict((r, p) for r, p, _ in v.orthanc_paths({"StorageDirectory": "/d/s"}, encrypted_storage=False))
    assert paths["orthanc index"] == "/d/s" and "orthanc storage (not encrypted by the plugin)" in paths
    cfg = {"IndexDirectory": "/i", "TemporaryDirectory": "/t", "WebViewer": {"CachePath": "/c"},
           "PostgreSQL": {"EnableIndex": True}}
    rows = v.orthanc_paths(cfg, encrypted_storage=True)
    assert [r for r, _, _ in rows] == ["orthanc index", "orthanc temporary directory", "web viewer cache"]
    assert "PostgreSQL" in rows[0][2] and rows[1][1] == "/t" and rows[2][1] == "/c"


def test_check_config_reports_orthanc_volumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.cli import main

    orthanc = tmp_path / "orthanc.json"
    orthanc.write_text(json.dumps({"StorageDirectory": str(tmp_path / "s"), "IndexDirectory": str(tmp_path / "i"),
                                   "TemporaryDirectory": str(tmp_path / "t")}))
    bridge_yaml = Path(__file__).resolve().parents[3] / "examples" / "bridge.yaml"
    run = CliRunner().invoke(main, ["check-config", str(bridge_yaml), "--orthanc-config", str(orthanc)])
    assert "orthanc index" in run.output and str(tmp_path / "i") in run.output, run.output
    # this machine's disk is not dm-crypt: every path is reported, with a WARNING line
    assert "WARNING: orthanc index" in run.output or "encrypted" in run.output
    assert "orthanc storage (not encrypted by the plugin)" in run.output
