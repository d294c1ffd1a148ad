"""SQLite read-then-write transactions must not fail when another connection commits in between.

A deferred transaction whose WAL snapshot went stale cannot upgrade to a writer: SQLite answers
"database is locked" at once, whatever the busy timeout.  `write_session` takes the lock first."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from bridge.store.db import engine, migrate, session, write_session
from bridge.store.models import RevokedToken


def _other_commit(url: str, jti: str) -> None:
    from datetime import UTC, datetime

    with session(engine(url)) as s:
        s.add(RevokedToken(jti=jti, exp=datetime(2099, 1, 1, tzinfo=UTC)))


def _read_then_write(url: str, opener, between: threading.Event, done: threading.Event) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    with opener(engine(url)) as s:
        s.scalars(select(RevokedToken)).all()  # the read that fixes the snapshot
        between.set()
        done.wait(5)  # another connection commits here
        s.add(RevokedToken(jti="mine", exp=datetime(2099, 1, 1, tzinfo=UTC)))


def _race(url: str, opener) -> BaseException | None:  # type: ignore[no-untyped-def]
    between, done = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            _read_then_write(url, opener, between, done)
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    assert between.wait(5)
    other = threading.Thread(target=_other_commit, args=(url, "other"))
    other.start()
    other.join(0.5)  # with write_session the other commit waits for us (busy timeout)
    done.set()
    t.join(10)
    other.join(10)
    return failure[0] if failure else None


def test_deferred_session_fails_and_write_session_does_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate(url)
    err = _race(url, session)
    assert isinstance(err, OperationalError) and "locked" in str(err)  # the failure write_session prevents

    url2 = f"sqlite:///{tmp_path / 'b.db'}"
    migrate(url2)
    assert _race(url2, write_session) is None
    with session(engine(url2)) as s:
        assert {r.jti for r in s.scalars(select(RevokedToken))} == {"mine", "other"}


@pytest.mark.parametrize("opener", [write_session])
def test_write_session_rolls_back_on_error(tmp_path: Path, opener) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    url = f"sqlite:///{tmp_path / 'c.db'}"
    migrate(url)
    with pytest.raises(RuntimeError), opener(engine(url)) as s:
        s.add(RevokedToken(jti="x", exp=datetime(2099, 1, 1, tzinfo=UTC)))
        raise RuntimeError("boom")
    with session(engine(url)) as s:
        assert s.scalars(select(RevokedToken)).all() == []
