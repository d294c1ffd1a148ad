"""Rotating the bridge's key-encryption key (KEK): re-wrap everything the old KEK protects.

The procedure (docs/encryption.md, *Rotating the KEK*): configure the new KEK as
``tokens.key_encryption_key`` and the old one as ``tokens.previous_key_encryption_key``, restart
(everything still opens: the previous KEK opens, never wraps), run :func:`rewrap`
(`pacs-bridge keys rewrap`), restart, then remove the previous KEK from the configuration.

Why a module of its own: it is the one place that knows every object under the KEK -- token
signing keys, the audit checkpoint key, the SQLCipher store key, gateway sessions -- so adding a
new kind of wrapped secret means adding it here, and the rotation test sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.kek import PREVIOUS_SETTING, KeyEncryptionError, KeyEncryptor


@dataclass
class RewrapReport:
    signing_keys: int = 0
    signing_keys_current: int = 0
    #: rows neither KEK opens (planted or damaged): left alone, never published (bridge/tokens/keys.py)
    signing_keys_unopenable: list[str] = field(default_factory=list)
    checkpoint_key: bool = False
    store_rekeyed: bool = False
    gateway_sessions: int = 0
    #: sealed audit files (archives, syslog spool) whose data key was re-wrapped
    audit_files: int = 0
    audit_files_unopenable: list[str] = field(default_factory=list)
    #: live gateway sessions neither KEK opens: they end at their next request (login again)
    gateway_sessions_unopenable: int = 0

    def lines(self) -> list[str]:
        out = [f"token signing keys: {self.signing_keys} re-wrapped, {self.signing_keys_current} already current"]
        if self.signing_keys_unopenable:
            out.append("token signing keys opening with neither KEK (left alone, never published): "
                       + ", ".join(self.signing_keys_unopenable))
        out.append(f"audit checkpoint key: {'re-wrapped' if self.checkpoint_key else 'already current'}")
        store = "rekeyed" if self.store_rekeyed else "not encrypted or already current"
        out.append(f"SQLite store (SQLCipher): {store}")
        out.append(f"sealed audit files (archives, spool): {self.audit_files} re-wrapped")
        if self.audit_files_unopenable:
            out.append("sealed audit files opening with neither KEK (left alone): "
                       + ", ".join(self.audit_files_unopenable))
        out.append(f"gateway sessions: {self.gateway_sessions} re-wrapped"
                   + (f", {self.gateway_sessions_unopenable} opening with neither KEK (they end at their next "
                      "request)" if self.gateway_sessions_unopenable else ""))
        return out


def rewrap(settings: Any) -> RewrapReport:
    """Re-wrap every secret the previous KEK protects under the current one (idempotent)."""
    from bridge.audit.keys import CheckpointKey
    from bridge.store.db import cipher_keys, engine, engine_for
    from bridge.tokens.store import SqlKeyRepository

    enc = KeyEncryptor.from_settings(settings)
    if enc.previous is None:
        raise KeyEncryptionError(f"{PREVIOUS_SETTING}: not set; there is nothing to re-wrap from")
    report = RewrapReport()
    current_key, previous_key = cipher_keys(settings)
    if current_key is not None and previous_key is not None:
        report.store_rekeyed = _rekey_sqlite(settings.store.url, current_key, previous_key, engine)
    eng = engine_for(settings)
    try:
        repo = SqlKeyRepository(eng)
        for rec in repo.all():
            try:
                new = enc.rewrapped(rec.private_key_encrypted, rec.kid)
            except KeyEncryptionError:
                report.signing_keys_unopenable.append(rec.kid)
                continue
            if new is None:
                report.signing_keys_current += 1
            elif repo.rewrap(rec.kid, rec.private_key_encrypted, new):
                report.signing_keys += 1
        from pathlib import Path

        if Path(settings.audit.checkpoint_key_file).exists():
            report.checkpoint_key = CheckpointKey.rewrap_file(Path(settings.audit.checkpoint_key_file), enc)
        report.gateway_sessions, report.gateway_sessions_unopenable = _rewrap_sessions(eng, enc)
        _rewrap_audit_files(settings, report)
    finally:
        eng.dispose()
    return report


def _rekey_sqlite(url: str, current: bytes, previous: bytes, make_engine: Any) -> bool:
    """``PRAGMA rekey`` when the file still opens with the previous KEK's key (stop the bridge
    first: a SQLite store has one host, and its running workers hold the old key)."""
    from sqlalchemy.engine import make_url

    from bridge.store.db import _key_that_opens

    path = make_url(url).database
    if _key_that_opens(path, [current, previous]) != previous:
        return False
    import sqlcipher3

    conn = sqlcipher3.dbapi2.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA key = \"x'{previous.hex()}'\"")
        conn.execute(f"PRAGMA rekey = \"x'{current.hex()}'\"")
    finally:
        conn.close()
    return True


def _rewrap_sessions(eng: Any, enc: KeyEncryptor) -> tuple[int, int]:
    """Re-wrap the gateway sessions' sealed tokens (compare-and-set per row: a session renewed
    meanwhile was sealed under the current KEK already)."""
    from sqlalchemy import inspect, select, update

    from bridge.store.db import session
    from bridge.store.models import GatewaySession
    from bridge.web.gateway.sessions import KEY_PURPOSE

    if "gateway_sessions" not in inspect(eng).get_table_names():
        return 0, 0
    sealer = enc.derived(KEY_PURPOSE)
    done = bad = 0
    with session(eng) as s:
        rows = s.execute(select(GatewaySession.id_hash, GatewaySession.secrets)).all()
    for id_hash, sealed in rows:
        try:
            new = sealer.rewrapped(bytes(sealed), id_hash, what="gateway session")
        except KeyEncryptionError:
            bad += 1
            continue
        if new is None:
            continue
        with session(eng) as s:
            res = s.execute(update(GatewaySession).where(GatewaySession.id_hash == id_hash,
                                                         GatewaySession.secrets == sealed).values(secrets=new))
            done += bool(res.rowcount)
    return done, bad


def rewrap_command() -> Any:
    """`pacs-bridge keys rewrap` (registered under the `keys` group by bridge/cli.py)."""
    import click

    from bridge.cli_common import config_option, load_settings

    @click.command("rewrap")
    @config_option
    def keys_rewrap(config_path: str | None) -> None:
        """Re-wrap every secret under tokens.key_encryption_key that only
        tokens.previous_key_encryption_key opens (a KEK rotation; stop a SQLite-backed bridge first)."""
        from bridge.core.audit_codes import AuditEventType
        from bridge.core.audit_events import Actor, AuditEvent

        settings = load_settings(config_path)
        report = rewrap(settings)
        for line in report.lines():
            click.echo(line)
        from bridge.audit.store import open_store

        open_store(settings).append(AuditEvent(
            type=AuditEventType.KEY_ROTATED, actor=Actor(client_id="pacs-bridge-cli"),
            details={"what": "key-encryption key: re-wrapped", "signing_keys": report.signing_keys,
                     "checkpoint_key": report.checkpoint_key, "store_rekeyed": report.store_rekeyed,
                     "gateway_sessions": report.gateway_sessions}))

    return keys_rewrap


def _rewrap_audit_files(settings: Any, report: RewrapReport) -> None:
    """Re-wrap the data key in the header of each sealed archive (kept for years) and syslog spool
    file; the body is not touched.  Written to a temporary file and renamed: a crash leaves the
    old or the new file, both of which open while the previous KEK is configured."""
    import os
    from pathlib import Path

    from bridge.audit.syslog import SPOOL_NAME
    from bridge.kek import audit_file_keys

    keys = audit_file_keys(settings)
    if keys is None:
        return
    a = settings.audit
    archive_dir, spool_dir = Path(a.archive_dir), Path(a.spool_dir)
    if archive_dir.is_dir():
        for path in sorted(archive_dir.glob("*.jsonl")):
            _rewrap_file(path, path.name, keys, report)
    if spool_dir.is_dir():
        import contextlib
        import fcntl

        # the syslog sender rewrites a spool file it could not finish (``_keep``) under this lock
        fd = os.open(spool_dir / ".flush.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for path in sorted(spool_dir.glob("*.msg")):
                with contextlib.suppress(FileNotFoundError):  # sent meanwhile
                    _rewrap_file(path, SPOOL_NAME, keys, report)
        finally:
            os.close(fd)


def _rewrap_file(path: Any, name: str, keys: Any, report: RewrapReport) -> None:
    import os

    from bridge.core import envelope
    from bridge.core.sealed import is_sealed

    data = path.read_bytes()
    if not is_sealed(data):
        return
    try:
        header = envelope.parse_header(data)
        if header.key_id == keys.current_key_id():
            return
        new = envelope.rewrap(keys, keys, header, name)
    except envelope.EnvelopeError:
        report.audit_files_unopenable.append(str(path))
        return
    tmp = path.with_name(f".{path.name}.rewrap")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(new.encode())
        f.write(memoryview(data)[header.length:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    report.audit_files += 1
