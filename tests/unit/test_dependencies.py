"""pyproject.toml declares exactly the third-party distributions the bridge imports.

Why: a declared-but-unused dependency is attack surface and upgrade work for nothing, and an
imported-but-undeclared one works only by accident (another package pulled it in) until a site's
install breaks. Runtime = bridge/; the dev stack (devstack/, its own distribution) declares its own needs, and
the `dev` extra installs it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "bridge"
DEVSTACK = ROOT / "devstack"

#: import name -> distribution name (normalised), where they differ
DISTRIBUTION = {
    "jwt": "pyjwt",
    "yaml": "pyyaml",
    "keycloak": "python-keycloak",
    "flask_limiter": "flask-limiter",
    "prometheus_client": "prometheus-client",
    "pydantic_settings": "pydantic-settings",
    "dicomanonymizer": "dicom-anonymizer",
    "sqlcipher3": "sqlcipher3-binary",
}
#: imported but not installed from PyPI: the module Orthanc itself provides to its Python plugins
HOST_PROVIDED = {"orthanc"}
#: imported only by the module that runs the web app (bridge/deploy/web_server.py), installed by the
#: `server` extra: the Orthanc plugin's bundle and the command-line tools do without it
SERVER_EXTRA = "server"
#: declared but never imported by name: a library loads them (reason each)
LOADED_BY_A_LIBRARY = {"redis": "limits imports it for a redis:// or rediss:// rate-limit storage URL"}


def _normalise(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    ours = {"bridge", "pacs_devstack", "__future__"}
    third_party = {n for n in names if n not in sys.stdlib_module_names and n not in ours}
    return {_normalise(DISTRIBUTION.get(n, n)) for n in third_party - HOST_PROVIDED}


def _project(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]


def _runtime_files() -> list[Path]:
    return list(BRIDGE.rglob("*.py"))


def test_runtime_dependencies_are_exactly_what_bridge_imports():
    declared = {_normalise(r) for r in _project()["dependencies"]}
    server = {_normalise(r) for r in _project()["optional-dependencies"][SERVER_EXTRA]}
    imported = _imported(_runtime_files())
    assert declared - set(LOADED_BY_A_LIBRARY) - imported == set(), "declared but not imported by bridge/"
    assert imported - declared == server, "imported by bridge/ but in neither the dependencies nor the server extra"
    assert _imported([BRIDGE / "deploy" / "web_server.py"]) >= server, "the server extra: what the web server imports"


def test_devstack_declares_what_it_imports_and_the_dev_extra_installs_it():
    runtime = {_normalise(r) for r in _project()["dependencies"]}
    devstack = {_normalise(r) for r in _project(DEVSTACK)["dependencies"]}
    needed = _imported(list((DEVSTACK / "pacs_devstack").rglob("*.py"))) - runtime
    assert needed <= devstack, f"devstack/ imports {sorted(needed - devstack)} missing from its pyproject"
    assert "pacs-sso-bridge" in devstack
    assert {_normalise(r) for r in _project()["optional-dependencies"]["dev"]} == {"pacs-bridge-devstack"}


def test_the_runtime_wheel_holds_no_dev_stack():
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["bridge*"]
    assert not (BRIDGE / "devstack").exists()


def test_requirements_and_import_names_meet_on_one_spelling(tmp_path):
    """Extras, version specifiers, case and `_` vs `-` never hide a match; import names map to distributions."""
    assert _normalise("PyYAML>=6.0") == "pyyaml"
    assert _normalise("pyjwt[crypto]>=2.8") == "pyjwt"
    assert _normalise("Flask_Limiter >= 3.5") == "flask-limiter"
    module = tmp_path / "m.py"
    module.write_text("import jwt.algorithms\nfrom yaml import safe_load\nimport os, orthanc\nfrom . import x\n")
    assert _imported([module]) == {"pyjwt", "pyyaml"}
