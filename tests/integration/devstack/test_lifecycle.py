"""`make demo` then `pacs-bridge devstack down` leaves no process of the stack behind.

Runs a second, complete stack in a private network namespace (Samba AD's LDAP ports are fixed,
and the session stack already holds them on the host's loopback), through the same commands a
person types: `pacs-bridge devstack up --owner demo`, the demo banner, `pacs-bridge devstack down`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pacs_devstack import install

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _processes_mentioning(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd or marker in env:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def test_demo_up_then_down_leaves_nothing(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("needs root and unshare(1) to run a second stack in its own network namespace")
    if shutil.which("ip") is None:
        install.apt_install(["iproute2"])
    # not under tmp_path: pytest's temp root is 0700 and PostgreSQL runs as its own user
    state = Path(tempfile.mkdtemp(prefix="pacs-bridge-demo-", dir="/tmp"))
    state.chmod(0o755)
    script = f"""
set -e
ip link set lo up
export PACS_BRIDGE_DEVSTACK_DIR={state}
{BIN}/pacs-bridge devstack up --owner demo
{BIN}/python -m pacs_devstack.demo_data --banner > {tmp_path}/banner.txt
{BIN}/pacs-bridge devstack status --json > {tmp_path}/status-up.json
{BIN}/pacs-bridge devstack down
{BIN}/pacs-bridge devstack status --json > {tmp_path}/status-down.json
"""
    res = subprocess.run(["unshare", "--net", "--", "bash", "-c", script], capture_output=True, text=True,
                         timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    up = json.loads((tmp_path / "status-up.json").read_text())
    down = json.loads((tmp_path / "status-down.json").read_text())
    assert all(up.values()), up
    assert not any(down.values()), down
    banner = (tmp_path / "banner.txt").read_text()
    assert "rad.alice" in banner and "pacs-bridge demo otp" in banner
    assert _processes_mentioning(str(state)) == []
    shutil.rmtree(state, ignore_errors=True)
