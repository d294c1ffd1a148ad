"""The directory connection never follows referrals (a referral would send the bind DN and
password to whatever host the directory, or an attacker in it, names)."""

from __future__ import annotations

from bridge.config import load_config
from bridge.directory.reader import reader_for


def _reader():
    settings = load_config(directory={"kind": "openldap", "url": "ldaps://127.0.0.1:1", "bind_dn": "cn=x",
                                      "bind_password": "pw", "base_dn": "dc=x"})
    return reader_for(settings.directory)


def test_connection_does_not_follow_referrals():
    conn = _reader()._connection()
    assert conn.auto_referrals is False
    assert conn.server.allowed_referral_hosts == []
    assert conn.read_only is True
