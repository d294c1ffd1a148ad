"""Alembic environment.  Run through :func:`bridge.store.db.migrate`, which hands over an open
connection; the URL branch serves the plain ``alembic`` command during development."""

from __future__ import annotations

from alembic import context

from bridge.store.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from bridge.store.db import engine

    eng = engine(config.get_main_option("sqlalchemy.url"))
    with eng.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    eng.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; use `pacs-bridge db upgrade`")
run()
