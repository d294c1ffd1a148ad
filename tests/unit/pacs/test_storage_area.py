"""The encrypted image store (bridge/core/envelope.py, bridge/pacs/storage_area.py): every case of
``storage_cases.py`` under the venv, and all of them again under Debian's ``/usr/bin/python3 -I``
with python3-cryptography 38, importing the modules from a built plugin bundle (what Orthanc runs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge.deploy import plugin_bundle as bundle
from tests.unit.pacs.storage_cases import CASES

SYSTEM_PYTHON = Path("/usr/bin/python3")
_RUN = r"""
import runpy, sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_under_the_venv(name: str) -> None:
    CASES[name]()


def test_every_case_under_debian_python_from_the_bundle(tmp_path: Path) -> None:
    # not skipped when missing: the dev stack installs orthanc-python's python3 with python3-cryptography
    assert SYSTEM_PYTHON.exists(), "Debian's /usr/bin/python3 with python3-cryptography"
    bundle.build(tmp_path / "bundle")
    cases = Path(__file__).with_name("storage_cases.py")
    run = subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", _RUN, str(tmp_path / "bundle" / bundle.LIB), str(cases)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert sorted(json.loads(run.stdout.strip().splitlines()[-1])) == sorted(CASES)
