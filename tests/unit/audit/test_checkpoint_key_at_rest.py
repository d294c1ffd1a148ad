"""The audit checkpoint signing key is stored encrypted under the bridge's KEK (issue 12, item 8):
the file holds no private key in clear, a wrong KEK is a clear error, an old plaintext PEM is
rewritten encrypted once, and checkpoints signed before the migration still verify."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bridge.audit.keys import CheckpointKey, KeyFileError, public_path
from bridge.audit.store import open_store
from bridge.config import load_config
from bridge.kek import KeyEncryptor

KEK = KeyEncryptor.generate_secret()


def _settings(tmp_path: Path, kek: str | None = KEK):
    tokens = {"key_encryption_key": kek} if kek else {}
    return load_config(store={"url": f"sqlite:///{tmp_path / 'audit.db'}"}, tokens=tokens,
                       audit={"checkpoint_key_file": str(tmp_path / "cp.key"), "checkpoint_every": 2,
                              "spool_dir": str(tmp_path / "spool")})


def _raw_private(key: CheckpointKey) -> bytes:
    assert key.private is not None
    return key.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())


def _plaintext_pem(key: CheckpointKey) -> bytes:
    assert key.private is not None
    return key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def test_new_key_file_holds_no_private_key_in_clear(tmp_path):
    path = tmp_path / "cp.key"
    key = CheckpointKey.load_or_create(path, KeyEncryptor.from_secret(KEK))
    data = path.read_bytes()
    assert b"PRIVATE KEY" not in data and b"-----BEGIN" not in data
    assert _raw_private(key) not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(data)
    assert doc["format"] == "pacs-bridge-audit-checkpoint-key/1" and doc["kid"] == key.kid
    # the .pub stays plaintext PEM: an auditor verifies without the KEK
    assert public_path(path).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert CheckpointKey.load_public(path).kid == key.kid
    assert CheckpointKey.load_public(public_path(path)).kid == key.kid


def test_restart_loads_the_same_key_and_signs(tmp_path):
    path = tmp_path / "cp.key"
    first = CheckpointKey.load_or_create(path, KeyEncryptor.from_secret(KEK))
    again = CheckpointKey.load_or_create(path, KeyEncryptor.from_secret(KEK))
    assert again.kid == first.kid
    assert first.verify(b"head", again.sign(b"head"))


def test_wrong_kek_is_a_clear_error_naming_the_file_and_the_setting(tmp_path):
    path = tmp_path / "cp.key"
    CheckpointKey.load_or_create(path, KeyEncryptor.from_secret(KEK))
    with pytest.raises(KeyFileError) as err:
        CheckpointKey.load_or_create(path, KeyEncryptor.from_secret(KeyEncryptor.generate_secret()))
    assert str(path) in str(err.value) and "tokens.key_encryption_key" in str(err.value)
    assert "cannot decrypt" in str(err.value)


def test_signing_without_a_kek_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(KeyFileError, match=r"tokens\.key_encryption_key"):
        open_store(_settings(tmp_path, kek=None))
    assert not (tmp_path / "cp.key").exists()  # nothing written in clear meanwhile


def test_ciphertext_moved_onto_another_public_key_does_not_open(tmp_path):
    """The ciphertext is bound to its key id: pasting key A's ciphertext under key B's public key fails."""
    enc = KeyEncryptor.from_secret(KEK)
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    CheckpointKey.load_or_create(a, enc)
    CheckpointKey.load_or_create(b, enc)
    doc_a, doc_b = json.loads(a.read_text()), json.loads(b.read_text())
    doc_b["private_key_encrypted"] = doc_a["private_key_encrypted"]
    b.write_text(json.dumps(doc_b))
    with pytest.raises(KeyFileError, match="cannot decrypt"):
        CheckpointKey.load_or_create(b, enc)


@pytest.mark.parametrize("content", [b"", b"{}", b'{"format": "other/1"}', b"not a key\n", b"[1, 2]"])
def test_malformed_key_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "cp.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=str(path)):
        CheckpointKey.load_or_create(path, KeyEncryptor.from_secret(KEK))


def test_plaintext_pem_is_rewritten_encrypted_and_old_checkpoints_still_verify(tmp_path):
    from bridge.audit.store import AuditStore
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType
    from bridge.store.db import engine, migrate

    settings = _settings(tmp_path)
    migrate(settings.store.url)
    # an older bridge: plaintext PEM key file, checkpoints signed with it
    old = CheckpointKey.generate()
    path = tmp_path / "cp.key"
    path.write_bytes(_plaintext_pem(old))
    path.chmod(0o600)
    before = AuditStore(engine(settings.store.url), old, checkpoint_every=2)
    for _ in range(4):
        before.append(ev.AuditEvent(AuditEventType.LOGOUT))
    # this bridge: the first signing open migrates the file, then signs on with the same key
    store = open_store(settings)
    assert store.key is not None and store.key.kid == old.kid
    for _ in range(2):
        store.append(ev.AuditEvent(AuditEventType.LOGOUT))
    data = path.read_bytes()
    assert b"PRIVATE KEY" not in data and _raw_private(old) not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".cp.key.*.tmp"))
    assert CheckpointKey.load_public(public_path(path)).kid == old.kid  # the .pub of the same key
    # restart: the encrypted file loads, the key is the same, old and new checkpoints verify
    restarted = open_store(settings)
    assert restarted.key is not None and restarted.key.kid == old.kid
    rep = restarted.verify()
    assert rep.ok and rep.checkpoints >= 3 and rep.signatures_checked, rep.message
    # an auditor with the .pub only (no KEK) verifies too
    path.rename(tmp_path / "elsewhere.key")
    auditor = open_store(_settings(tmp_path, kek=None), signing=False)
    rep = auditor.verify()
    assert rep.ok and rep.signatures_checked, rep.message


def test_token_key_rotation_leaves_the_checkpoint_key_alone(tmp_path):
    """`pacs-bridge keys rotate` rotates the token keys; the checkpoint key and old checkpoints stay valid."""
    from bridge.core import audit_events as ev
    from bridge.core.audit_codes import AuditEventType
    from bridge.services import Services
    from bridge.store.db import migrate

    settings = _settings(tmp_path)
    migrate(settings.store.url)
    store = open_store(settings)
    for _ in range(2):
        store.append(ev.AuditEvent(AuditEventType.LOGOUT))
    kid = store.key.kid  # type: ignore[union-attr]
    Services(settings).key_ring.rotate()
    store2 = open_store(settings)
    assert store2.key is not None and store2.key.kid == kid
    rep = store2.verify()
    assert rep.ok and rep.signatures_checked, rep.message
