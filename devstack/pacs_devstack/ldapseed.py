"""LDAP client plumbing shared by the two directory services of the dev stack (Samba AD, slapd).

Both are reached the way the bridge reaches a hospital directory: simple bind over TLS, the
server certificate verified against the dev stack CA.  Seeding uses one connection and plain
`add`/`modify` so a failure names the entry that broke.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException

from pacs_devstack.process import DevstackError


def connect(url: str, ca_file: Path | str, bind_dn: str, password: str, *,
            timeout: float = 10) -> ldap3.Connection:
    """Bind with SIMPLE over LDAPS (`ldaps://`) or StartTLS (`ldap://`), verifying the CA; raise if not."""
    parts = urlsplit(url)
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file), version=ssl.PROTOCOL_TLS_CLIENT)
    server = ldap3.Server(parts.hostname or "127.0.0.1", port=parts.port, use_ssl=parts.scheme == "ldaps",
                          tls=tls, get_info=ldap3.NONE, connect_timeout=timeout)
    conn = ldap3.Connection(server, user=bind_dn, password=password, receive_timeout=timeout,
                            raise_exceptions=False)
    conn.open()
    if parts.scheme == "ldap" and not conn.start_tls():
        raise DevstackError(f"{url}: StartTLS failed: {conn.result}")
    if not conn.bind():
        desc = conn.result.get("description"), conn.result.get("message")
        conn.unbind()
        raise DevstackError(f"{url}: bind as {bind_dn} failed: {desc}")
    return conn


def add(conn: ldap3.Connection, dn: str, object_class: list[str] | str, attrs: dict[str, Any]) -> None:
    """Add one entry; a failure names the entry (never the attribute values: they may be passwords)."""
    try:
        ok = conn.add(dn, object_class, attrs)
    except LDAPException as exc:
        raise DevstackError(f"seeding {dn}: {exc.__class__.__name__}") from None
    if not ok:
        raise DevstackError(f"seeding {dn}: {conn.result.get('description')} {conn.result.get('message')}")


def replace(conn: ldap3.Connection, dn: str, attrs: dict[str, list[Any]]) -> None:
    """Replace attribute values of one entry; errors name the entry and attributes."""
    changes = {k: [(ldap3.MODIFY_REPLACE, v)] for k, v in attrs.items()}
    try:
        ok = conn.modify(dn, changes)
    except LDAPException as exc:
        raise DevstackError(f"modifying {', '.join(attrs)} of {dn}: {exc.__class__.__name__}") from None
    if not ok:
        raise DevstackError(f"modifying {', '.join(attrs)} of {dn}: {conn.result.get('description')} "
                            f"{conn.result.get('message')}")
