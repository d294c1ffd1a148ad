"""Rotating the bridge's KEK: with the new KEK current and the old one previous, everything the
old one wrapped still opens; `keys rewrap` moves all of it under the new one; after a restart
with the new KEK alone, the old data reads (signing key, checkpoint key and the chain it
signed, gateway sessions, the SQLCipher store) and the old KEK opens nothing any more."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.audit.store import open_store
from bridge.cli import main
from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.kek import KeyEncryptionError, KeyEncryptor
from bridge.kek_rotation import rewrap
from bridge.services import Services
from bridge.store import db
from bridge.web.gateway.sessions import SessionStore, Tokens

OLD, NEW = KeyEncryptor.generate_secret(), KeyEncryptor.generate_secret()


def _settings(tmp: Path, kek: str, previous: str | None = None) -> Any:
    tokens = {"key_encryption_key": kek, "issuer": "https://bridge.test"}
    if previous:
        tokens["previous_key_encryption_key"] = previous
    return load_config(store={"url": f"sqlite:///{tmp}/bridge.db", "sqlcipher": True}, tokens=tokens,
                       audit={"checkpoint_key_file": str(tmp / "cp.key"), "checkpoint_every": 5})


def _session_store(settings: Any) -> SessionStore:
    return SessionStore.under_kek(db.engine_for(settings), KeyEncryptor.from_settings(settings))


@pytest.fixture
def before(tmp_path: Path) -> dict[str, Any]:
    """A bridge that ran under the old KEK: a signing key, a signed token, an audit chain with
    signed checkpoints, a gateway session."""
    settings = _settings(tmp_path, OLD)
    db.migrate_store(settings)
    services = Services(settings)
    kid = services.key_ring.active().kid
    token = services.key_ring.sign({"sub": "s", "iss": "https://bridge.test", "exp": int(time.time()) + 600})
    store = open_store(settings)
    for i in range(12):
        store.append(ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor(username=f"u{i}"),
                                   objects=(ev.patient("P-1"),)))
    raw = _session_store(settings).create(subject_id="s", kc_sub="k", sid=None, username="rad.alice",
                                          tokens=Tokens("pacs-token", None, None), token_exp=time.time() + 600,
                                          lifetime_seconds=3600)
    services.engine.dispose()
    store.engine.dispose()
    return {"kid": kid, "token": token, "session": raw, "records": store.verify().records}


def _reads_everything(settings: Any, before: dict[str, Any]) -> None:
    services = Services(settings)  # a restart: nothing cached
    assert services.key_ring.active().kid == before["kid"]
    assert before["kid"] in {k["kid"] for k in services.key_ring.jwks()["keys"]}
    rep = open_store(settings).verify(open_store(settings).key)
    assert rep.ok and rep.records == before["records"] and rep.signatures_checked
    login = _session_store(settings).get(before["session"])
    assert login is not None and login.tokens.pacs_token == "pacs-token"
    services.engine.dispose()


def test_rotate_rewrap_restart_read_old_data(tmp_path: Path, before: dict[str, Any]) -> None:
    during = _settings(tmp_path, NEW, previous=OLD)
    _reads_everything(during, before)  # the previous KEK opens while the rotation runs
    report = rewrap(during)
    assert (report.signing_keys, report.checkpoint_key, report.store_rekeyed, report.gateway_sessions) == \
        (1, True, True, 1)
    again = rewrap(during)  # idempotent
    assert (again.signing_keys, again.signing_keys_current, again.checkpoint_key, again.store_rekeyed) == \
        (0, 1, False, False)
    after = _settings(tmp_path, NEW)
    _reads_everything(after, before)
    with pytest.raises(KeyEncryptionError, match="previous_key_encryption_key: not set"):
        rewrap(after)


def test_after_the_rewrap_the_old_kek_opens_nothing(tmp_path: Path, before: dict[str, Any]) -> None:
    rewrap(_settings(tmp_path, NEW, previous=OLD))
    old = _settings(tmp_path, OLD)
    with pytest.raises(db.StoreError, match="does not open this database"):
        Services(old).key_ring.active()


def test_a_planted_row_is_reported_not_rewrapped(tmp_path: Path, before: dict[str, Any]) -> None:
    from bridge.tokens.keys import KeyRecord, utcnow
    from bridge.tokens.store import SqlKeyRepository

    during = _settings(tmp_path, NEW, previous=OLD)
    intruder = KeyEncryptor(KeyEncryptor.from_secret(KeyEncryptor.generate_secret())._kek)
    SqlKeyRepository(db.engine_for(during)).add(KeyRecord("planted", "ES256", {"kid": "planted"},
                                                          intruder.encrypt(b"x", "planted"), utcnow()))
    report = rewrap(during)
    assert report.signing_keys_unopenable == ["planted"] and report.signing_keys == 1


def test_the_previous_kek_must_differ_and_be_valid(tmp_path: Path) -> None:
    with pytest.raises(KeyEncryptionError, match="previous_key_encryption_key: the same key"):
        KeyEncryptor.from_settings(_settings(tmp_path, OLD, previous=OLD))
    with pytest.raises(KeyEncryptionError, match=r"previous_key_encryption_key: must be 32 bytes"):
        KeyEncryptor.from_settings(_settings(tmp_path, OLD, previous="c2hvcnQ="))


def test_the_command_reports_and_audits(tmp_path: Path, before: dict[str, Any]) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(f"store: {{url: 'sqlite:///{tmp_path}/bridge.db', sqlcipher: true}}\n"
                      f"tokens: {{key_encryption_key: '{NEW}', previous_key_encryption_key: '{OLD}'}}\n"
                      f"audit: {{checkpoint_key_file: '{tmp_path}/cp.key'}}\n")
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["keys", "rewrap", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "token signing keys: 1 re-wrapped" in result.output and OLD not in result.output
    trail = open_store(_settings(tmp_path, NEW), signing=False).query(types=["key.rotated"])
    assert trail and "re-wrapped" in str(trail[-1])


def test_checkpoint_key_rotation_keeps_the_old_trail_verifying(tmp_path: Path, before: dict[str, Any]) -> None:
    """Rotate the checkpoint key, restart, append under the new key: the whole trail verifies with
    the key file (current + retired) and with the public files alone; without the retired file the
    old checkpoints are named as signed by an unknown key."""
    from bridge.audit.keys import CheckpointKey, public_path, retired_path

    config = tmp_path / "bridge.yaml"
    config.write_text(f"store: {{url: 'sqlite:///{tmp_path}/bridge.db', sqlcipher: true}}\n"
                      f"tokens: {{key_encryption_key: '{OLD}'}}\n"
                      f"audit: {{checkpoint_key_file: '{tmp_path}/cp.key', checkpoint_every: 5}}\n")
    config.chmod(0o600)
    old_kid = CheckpointKey.load_public(tmp_path / "cp.key.pub").kid
    result = CliRunner().invoke(main, ["audit", "rotate-checkpoint-key", "--config", str(config)])
    assert result.exit_code == 0, result.output
    settings = _settings(tmp_path, OLD)
    store = open_store(settings)  # a restart
    assert store.key is not None and store.key.kid != old_kid
    for i in range(7):
        store.append(ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor(username=f"v{i}"),
                                   objects=(ev.patient("P-2"),)))
    full = store.verify(store.key)
    assert full.ok and full.signatures_checked and full.records == before["records"] + 1 + 7
    public_only = CheckpointKey.load_public(public_path(tmp_path / "cp.key"))
    assert {old_kid, store.key.kid} <= {public_only.kid, *(CheckpointKey(r).kid for r in public_only.retired)}
    assert store.verify(public_only).ok
    retired_path(tmp_path / "cp.key").rename(tmp_path / "elsewhere.pub")
    broken = store.verify(CheckpointKey.load_public(public_path(tmp_path / "cp.key")))
    assert not broken.ok and "unknown key" in broken.message
