"""One Keycloak admin client in the whole project: python-keycloak's ``KeycloakAdmin``, built in
``bridge/kcadmin.py`` (CA-verified TLS, the admin realm, the timeout in one place).  The bridge,
the dev stack's seeding, the integration tests and the benchmarks all ask that builder; none
constructs a ``KeycloakAdmin`` itself or writes admin REST URLs by hand."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "bridge" / "kcadmin.py"
#: what a hand-written admin REST client has to spell out
ADMIN_PATH = "/admin/" + "realms"


def _sources() -> list[Path]:
    here = Path(__file__).resolve()
    return [p for d in ("bridge", "devstack", "tests", "bench") for p in sorted((ROOT / d).rglob("*.py"))
            if p.resolve() != here]


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_only_bridge_kcadmin_constructs_the_admin_client() -> None:
    for path in _sources():
        if path == BUILDER:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                assert name != "KeycloakAdmin", (
                    f"{path.relative_to(ROOT)}:{node.lineno} builds a KeycloakAdmin: use bridge.kcadmin.admin_client")


def test_no_hand_written_admin_rest_calls() -> None:
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                assert ADMIN_PATH not in node.value, (
                    f"{path.relative_to(ROOT)}:{node.lineno} calls the admin REST API by hand: use python-keycloak")
