"""Encrypt an existing plaintext SQLite store with SQLCipher (`pacs-bridge db encrypt`).

Offline (stop the bridge first): the plaintext file is exported into a new encrypted file with
SQLCipher's ``sqlcipher_export``, the copy is opened with the key and compared table by table,
and only then replaces the original; the plaintext file and its WAL are removed.  A failure at
any step leaves the original untouched (nothing is lost) and names the step.
"""

from __future__ import annotations

import os
from pathlib import Path

from bridge.store.db import StoreError


def _connect(path: Path, key: bytes | None):  # type: ignore[no-untyped-def]
    import sqlcipher3

    conn = sqlcipher3.dbapi2.connect(str(path), isolation_level=None)
    if key is not None:
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return conn


def _counts(conn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}  # noqa: S608 - names from sqlite_master


def is_encrypted(path: Path) -> bool:
    """A plaintext SQLite file starts with its format string; an SQLCipher file is random bytes."""
    with open(path, "rb") as f:
        return f.read(16) != b"SQLite format 3\x00"


def encrypt_file(path: Path, key: bytes) -> dict[str, int]:
    """Encrypt the SQLite file ``path`` in place under ``key``; the row count of each table."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"store.url: {path}: no such file")
    if is_encrypted(path):
        raise StoreError(f"store.url: {path}: already encrypted (or not a SQLite file)")
    new = path.with_name(path.name + ".encrypting")
    new.unlink(missing_ok=True)
    src = _connect(path, None)
    try:
        src.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file first
        before = _counts(src)
        src.execute(f"ATTACH DATABASE ? AS encrypted KEY \"x'{key.hex()}'\"", (str(new),))
        src.execute("SELECT sqlcipher_export('encrypted')")
        version = src.execute("PRAGMA user_version").fetchone()[0]
        src.execute(f"PRAGMA encrypted.user_version = {int(version)}")
        src.execute("DETACH DATABASE encrypted")
    finally:
        src.close()
    check = _connect(new, key)
    try:
        after = _counts(check)
        check.execute("PRAGMA journal_mode=WAL")
    finally:
        check.close()
    if after != before:
        new.unlink(missing_ok=True)
        raise StoreError(f"store.url: {path}: the encrypted copy differs ({before} != {after}); "
                         "the original is unchanged")
    os.chmod(new, 0o600)
    with open(new, "rb") as f:
        os.fsync(f.fileno())
    os.replace(new, path)
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return after
