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

    files = [*sorted((ROOT / "bridge" / "core").glob("*.py")), *sorted((ROOT / "bridge" / "pacs").glob("*.py"))]
    allowed = set(sys.stdlib_module_names) | {"jwt", "cryptography", "bridge", "orthanc"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.relative_to(ROOT)} imports {name}"


def test_the_core_and_plugin_contracts_name_every_other_part_of_bridge() -> None:
    """A new top-level module (say bridge/gateway.py) must not slip past the core's and the plugin's
    contracts because nobody added it to their forbidden lists."""
    import tomllib

    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "bridge").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    by_source = {tuple(c["source_modules"]): set(c["forbidden_modules"]) for c in contracts if c["type"] == "forbidden"}
    assert by_source[("bridge.core",)] == {f"bridge.{m}" for m in parts - {"core"}}
    assert by_source[("bridge.pacs",)] == {f"bridge.{m}" for m in parts - {"core", "pacs"}}
