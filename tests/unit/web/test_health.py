"""``/readyz`` (the load balancer's health check) and the 503 a request gets while the database
is unreachable (instead of a 500 that a client would not retry)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from bridge.config import load_config
from bridge.store.db import migrate
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app


@pytest.fixture
def app(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    settings = load_config(
        store={"url": url},
        audit={"spool_dir": str(tmp_path / "spool"), "checkpoint_key_file": str(tmp_path / "ck.key"),
               "archive_dir": str(tmp_path / "archive")},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret()},
        bridge={"session_secret": secrets.token_urlsafe(16)},
    )
    return create_app(settings)


def test_ready_when_the_database_answers(app: Any) -> None:
    r = app.test_client().get("/readyz")
    assert r.status_code == 200 and r.json == {"status": "ready"}
    assert r.headers["Cache-Control"] == "no-store"
    assert app.test_client().head("/readyz").status_code == 200


def test_not_ready_when_the_database_does_not_answer(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.web import health

    def down(_app: Any) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(health, "_ping", down)
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "database unavailable"
    assert "refused" not in r.get_data(as_text=True)  # no driver detail (host, user) leaks


def test_database_error_in_any_request_is_503_with_retry_after(app: Any) -> None:
    @app.get("/boom")
    def boom() -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("server closed the connection"))

    r = app.test_client().get("/boom")
    assert r.status_code == 503
    assert r.json["error"] == "temporarily_unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert "server closed" not in r.get_data(as_text=True)


def test_readyz_takes_no_query_or_other_method(app: Any) -> None:
    c = app.test_client()
    assert c.post("/readyz").status_code == 405
    assert c.get("/readyz/").status_code == 404
