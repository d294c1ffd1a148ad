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


class _FakeConn:
    """A connection whose search answers one entry and one continuation reference to another host."""

    result = {"result": 0, "controls": {}}

    def search(self, *args, **kwargs):
        self.response = [
            {"type": "searchResRef", "uri": ["ldap://evil.example/dc=x"]},
            {"type": "searchResEntry", "dn": "cn=a,dc=x", "raw_attributes": {"cn": [b"a"]}},
        ]
        return True


def test_search_continuation_references_are_skipped():
    entries = list(_reader()._search(_FakeConn(), "dc=x", "(objectClass=*)", ["cn"]))
    assert [e.dn for e in entries] == ["cn=a,dc=x"]


def test_a_referral_result_is_an_error_not_followed():
    import pytest

    from bridge.directory.reader import DirectoryUnavailable

    class Referral(_FakeConn):
        result = {"result": 10, "description": "referral", "referrals": ["ldap://evil.example/dc=x"]}

        def search(self, *args, **kwargs):
            self.response = []
            return False

    with pytest.raises(DirectoryUnavailable, match="referral"):
        list(_reader()._search(Referral(), "dc=x", "(objectClass=*)", ["cn"]))
