"""`pacs-bridge db`: the bridge's database (migrations)."""

from __future__ import annotations

import sys

import click

from bridge.cli_common import config_option, load_or_exit


@click.group("db")
def db_cli() -> None:
    """The bridge's database (SQLite file or PostgreSQL, `store.url`)."""


@db_cli.command("upgrade")
@config_option
@click.option("--url", default=None, help="database URL (default: store.url from the configuration)")
def db_upgrade(config_path: str | None, url: str | None) -> None:
    """Create or migrate the database schema to the newest revision."""
    from bridge.store.db import StoreError, migrate, safe_url

    url = url or load_or_exit(config_path).store.url
    try:
        rev = migrate(url)
    except StoreError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"{safe_url(url)}: at revision {rev}")
