"""docs/openapi.yaml describes every route of the bridge's Flask app, and nothing that is not there."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import yaml

from bridge.config import load_config
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app

SPEC = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    from bridge.store.db import migrate

    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    settings = load_config(
        bridge={"session_secret": secrets.token_urlsafe(16), "viewer_redirect_uris": ["https://v.test/cb"]},
        keycloak={"client_secret": "x"},
        store={"url": url},
        audit={"spool_dir": str(tmp_path / "spool"), "checkpoint_key_file": str(tmp_path / "ck.key"),
               "archive_dir": str(tmp_path / "archive")},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret()},
        gateway={"orthanc_url": "http://127.0.0.1:8042", "allow_plaintext": True},
    )
    app = create_app(settings)
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        out |= {(path, m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return out


def test_every_route_is_documented(tmp_path: Path) -> None:
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.1")
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops if m in ("get", "post", "put", "delete")}
    routes = _app_routes(tmp_path)
    assert routes - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - routes == set(), "docs/openapi.yaml documents routes the app does not serve"
