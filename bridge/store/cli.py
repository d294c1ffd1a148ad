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
    from bridge.store.db import cipher_key, migrate, safe_url

    settings = load_settings(config_path) if url is None or config_path else None
    url = url or settings.store.url  # type: ignore[union-attr]
    rev = migrate(url, cipher_key=cipher_key(settings) if settings else None)  # StoreError: exit 2
    click.echo(f"{safe_url(url)}: at revision {rev}")


@db_cli.command("encrypt")
@config_option
def db_encrypt(config_path: str | None) -> None:
    """Encrypt the existing plaintext SQLite store in place (stop the bridge first), under the key
    derived from tokens.key_encryption_key; then set store.sqlcipher: true."""
    from bridge.kek import KeyEncryptor
    from bridge.store.db import SQLCIPHER_PURPOSE, StoreError
    from bridge.store.encrypt import encrypt_file

    settings = load_settings(config_path)
    from sqlalchemy.engine import make_url

    url = make_url(settings.store.url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise StoreError("store.url: `db encrypt` encrypts a SQLite file; PostgreSQL's data directory "
                         "belongs on an encrypted volume (docs/encryption.md)")
    key = KeyEncryptor.from_settings(settings).derived_key(SQLCIPHER_PURPOSE)
    counts = encrypt_file(url.database, key)
    click.echo(f"{url.database}: encrypted ({sum(counts.values())} rows in {len(counts)} tables); "
               "now set store.sqlcipher: true")
