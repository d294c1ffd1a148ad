"""The layer contracts of ``pyproject.toml`` (import-linter) hold, so plain ``pytest`` fails on a
violation too, not only ``make test``: the core imports nothing else from the project, the Orthanc
plugin imports only the core, no two top-level parts of ``bridge`` import each other, the runtime
never imports the dev stack, and no two modules of the dev stack import each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    # the dev stack's own distribution from this checkout too, not whichever copy is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "devstack")))}
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_core_and_plugin_use_only_stdlib_jwt_and_cryptography() -> None:
    """What Debian's python3 inside Orthanc has: the standard library, python3-jwt, python3-cryptography."""
    import ast

    from bridge.pacs.bundle import PLUGIN_MODULES

    files = [*sorted((ROOT / "bridge" / "core").glob("*.py")),
             *(ROOT / "bridge" / "pacs" / f"{m}.py" for m in PLUGIN_MODULES)]
    allowed = set(sys.stdlib_module_names) | {"jwt", "cryptography", "bridge", "orthanc"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.relative_to(ROOT)} imports {name}"
