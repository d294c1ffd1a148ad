"""The composition root (bridge/services.py): one engine per process under everything it builds,
injected objects win, the Keycloak admin client needs its credentials, and only the outer layers
import it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.kcadmin import NoAdminCredentials
from bridge.services import Services
from bridge.store.db import migrate
from bridge.tokens.keys import KeyEncryptor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    return load_config(
        store={"url": url},
        audit={"checkpoint_key_file": str(tmp_path / "checkpoint.key"), "spool_dir": str(tmp_path / "spool")},
        keycloak={"url": "https://kc.test", "realm": "hospital"},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": "https://127.0.0.1:9443"},
    )


def test_everything_is_built_once_over_one_engine(settings) -> None:  # type: ignore[no-untyped-def]
    s = Services(settings)
    assert s.engine is s.engine
    assert s.audit_store is s.audit_store and s.audit_store.engine is s.engine
    assert s.key_ring is s.key_ring
    service = s.token_service
    assert service is s.token_service and service.ring is s.key_ring


def test_an_injected_audit_store_brings_its_engine(settings) -> None:  # type: ignore[no-untyped-def]
    store = Services(settings).audit_store
    s = Services(settings, audit_store=store)
    assert s.audit_store is store and s.engine is store.engine


def test_the_admin_client_needs_the_admin_password(settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoAdminCredentials, match=r"keycloak\.admin_password"):
        _ = Services(settings).keycloak_admin


def test_only_the_outer_layers_import_the_composition_root() -> None:
    # sync: build_runner, `sync` and `serve`; compliance: the report reads every part;
    # review: `review run` and its job in `serve`
    allowed = {"web", "cli.py", "devstack", "sync", "review", "services.py", "compliance"}
    for path in (ROOT / "bridge").rglob("*.py"):
        top = path.relative_to(ROOT / "bridge").parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in ("bridge.services", "bridge"):
                names = {a.name for a in node.names}
                if node.module == "bridge.services" or "services" in names:
                    assert top in allowed, f"{path.relative_to(ROOT)} imports the composition root"
