"""The token service's tables on SQLite (migrated schema): keys, revocations, assignments."""

from __future__ import annotations

import time
from pathlib import Path

from bridge.store.db import engine, migrate, session
from bridge.store.models import RoleAssignment
from bridge.tokens.keys import KeyEncryptor, KeyRing
from bridge.tokens.store import SqlAssignmentSource, SqlKeyRepository, SqlRevocationStore


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    return engine(url)


def test_key_ring_on_sql_survives_restart_and_rotates(tmp_path: Path) -> None:
    eng = _engine(tmp_path)
    secret = KeyEncryptor.generate_secret()
    ring = KeyRing(SqlKeyRepository(eng), KeyEncryptor.from_secret(secret), refresh_seconds=0)
    first = ring.active().kid
    again = KeyRing(SqlKeyRepository(eng), KeyEncryptor.from_secret(secret), refresh_seconds=0)
    assert again.active().kid == first
    second = again.rotate().kid
    assert {k["kid"] for k in again.jwks()["keys"]} == {first, second}
    rec = {r.kid: r for r in again.records()}
    assert rec[first].not_after is not None and rec[second].retired_at is None


def test_revocations_persist_until_expiry(tmp_path: Path) -> None:
    eng = _engine(tmp_path)
    store = SqlRevocationStore(eng, cache_seconds=0)
    store.revoke("j1", int(time.time()) + 60)
    store.revoke("j1", int(time.time()) + 60)  # idempotent
    store.revoke("old", int(time.time()) - 60)
    other = SqlRevocationStore(eng, cache_seconds=0)
    assert other.is_revoked("j1") and not other.is_revoked("old")
    assert [j for j, _ in other.active()] == ["j1"]


def test_assignments_by_directory_id_or_username(tmp_path: Path) -> None:
    eng = _engine(tmp_path)
    with session(eng) as s:
        s.add(RoleAssignment(subject_id="guid-1", username="rad.alice", role="radiologist",
                             scopes={"departments": ["Radiology"]}))
        s.add(RoleAssignment(subject_id="", username="breakglass", role="pacs-admin", managed=False,
                             scopes={"departments": ["IT"]}))
    src = SqlAssignmentSource(eng)
    assert [a.role for a in src.assignments("guid-1", None)] == ["radiologist"]
    assert src.assignments(None, "breakglass")[0].scopes == {"departments": ["IT"]}  # a hand-made row
    assert src.assignments(None, "rad.alice") == []  # the sync's row belongs to the directory account
    assert src.assignments("nobody", "nobody") == []


def test_revoke_subject_watermark(tmp_path: Path) -> None:
    from bridge.tokens.store import revoke_subject, revoked_by_subject

    eng = _engine(tmp_path)
    now = int(time.time())
    revoke_subject(eng, "guid-1", max_token_lifetime=600)
    store = SqlRevocationStore(eng, cache_seconds=0)
    nb, exp = store.subjects()["guid-1"]
    assert abs(nb - now) <= 1 and exp == nb + 600
    assert revoked_by_subject(store, {"sub": "guid-1", "iat": now - 5})
    assert not revoked_by_subject(store, {"sub": "guid-1", "iat": nb + 1})  # a later login is fine
    assert not revoked_by_subject(store, {"sub": "guid-2", "iat": now - 5})
    store.revoke_subject("guid-1", nb - 100, exp - 100)  # never lowered
    assert store.subjects()["guid-1"] == (nb, exp)
