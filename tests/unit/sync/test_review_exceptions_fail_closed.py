"""A sync never plans without the access review's exceptions: a database error while reading them
would otherwise give back every role a reviewer revoked (found by the attack review)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from bridge.errors import UnavailableError
from bridge.review import exceptions
from bridge.store import db
from bridge.sync.runner import SyncRunner


def _runner(url: str) -> SyncRunner:
    runner = SyncRunner.__new__(SyncRunner)
    runner.engine = db.engine(url)
    return runner


def test_a_transient_database_error_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    db.migrate(url)

    def locked(engine, now=None):  # type: ignore[no-untyped-def]
        raise OperationalError("SELECT ...", {}, Exception("database is locked"))

    monkeypatch.setattr(exceptions, "by_key", locked)
    with pytest.raises(UnavailableError, match="nothing applied"):
        _runner(url)._review_exceptions()


def test_a_store_without_review_tables_has_no_exceptions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    db.migrate(url, "0005")  # before the review tables
    assert _runner(url)._review_exceptions() == {}
