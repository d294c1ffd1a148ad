"""`pacs-bridge db`: the bridge's database (migrations)."""

from __future__ import annotations

import click

from bridge.cli_common import config_option, load_settings


@click.group("db")
def db_cli() -> None:
    """The bridge's database (SQLite file or PostgreSQL, `store.url`)."""


@db_cli.command("upgrade")
@config_option
@click.option("--url", default=None, help="database URL (default: store.url from the configuration)")
def db_upgrade(config_path: str | None, url: str | None) -> None:
    """Create or migrate the database schema to the newest revision."""
    from bridge.store.db import migrate, safe_url

    url = url or load_settings(config_path).store.url
    rev = migrate(url)  # StoreError: exit 2
    click.echo(f"{safe_url(url)}: at revision {rev}")
