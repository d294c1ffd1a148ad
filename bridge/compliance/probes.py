"""Transmission security, probed: connect to each configured hop and complete a verified TLS
handshake with the CA the bridge itself uses for that hop.

Why probe rather than read the configuration: an ``https://`` URL proves nothing about the
server at the other end today (a proxy in front may have been changed, a certificate may have
expired).  Each probe does only a handshake -- no credentials are sent.  PostgreSQL first asks
for TLS with its SSLRequest message and LDAP (``start_tls``) with the StartTLS operation, as
their clients do.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.compliance.evidence import Evidence, failed, passed

#: PostgreSQL's SSLRequest code (protocol 3: 1234 << 16 | 5679)
_PG_SSL_REQUEST = struct.pack("!II", 8, 80877103)
TIMEOUT = 5.0


@dataclass(frozen=True)
class Hop:
    """One configured connection of the deployment."""

    name: str  # e.g. "keycloak"
    setting: str  # the configuration key it comes from (named in the evidence)
    scheme: str  # "tls" (direct), "postgres", "starttls-ldap", or "plain"
    host: str
    port: int
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def _context(hop: Hop) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(hop.ca_file) if hop.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if hop.client_cert:
        ctx.load_cert_chain(str(hop.client_cert), str(hop.client_key) if hop.client_key else None)
    return ctx


def _starttls_ldap(sock: socket.socket) -> None:
    """Send LDAP's StartTLS extended request (RFC 4511 4.14.1) and check the server said success."""
    oid = b"1.3.6.1.4.1.1466.20037"
    ext = b"\x77" + bytes([len(oid) + 2]) + b"\x80" + bytes([len(oid)]) + oid  # [APPLICATION 23]
    body = b"\x02\x01\x01" + ext  # messageID 1
    sock.sendall(b"\x30" + bytes([len(body)]) + body)
    reply = sock.recv(4096)
    # ... ExtendedResponse [APPLICATION 24] { resultCode ENUMERATED 0 ... }
    at = reply.find(b"\x78")
    if at < 0 or reply[at + 2:at + 5] != b"\x0a\x01\x00":
        raise ssl.SSLError("the LDAP server refused StartTLS")


def handshake(hop: Hop) -> dict[str, Any]:
    """Connect and complete a verified handshake; what was negotiated (raises on any failure)."""
    with socket.create_connection((hop.host, hop.port), timeout=TIMEOUT) as raw:
        if hop.scheme == "postgres":
            raw.sendall(_PG_SSL_REQUEST)
            if raw.recv(1) != b"S":
                raise ssl.SSLError("the PostgreSQL server refused TLS (SSLRequest answered N)")
        elif hop.scheme == "starttls-ldap":
            _starttls_ldap(raw)
        with _context(hop).wrap_socket(raw, server_hostname=hop.host) as tls:
            cert = tls.getpeercert() or {}
            return {"version": tls.version(), "cipher": (tls.cipher() or ("",))[0],
                    "not_after": cert.get("notAfter", "")}


def probe(hop: Hop) -> Evidence:
    """The evidence for one hop: plain is a failure, so is a handshake that does not verify."""
    check, title = f"tls.{hop.name}", f"TLS to {hop.name} ({hop.setting})"
    where = f"{hop.host}:{hop.port}"
    if hop.scheme == "plain":
        return failed(check, title, f"{where}: configured without TLS ({hop.setting})", host=where)
    try:
        got = handshake(hop)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return failed(check, title, f"{where}: no verified TLS handshake: {exc}", host=where)
    return passed(check, title, f"{where}: {got['version']}, {got['cipher']}, certificate valid until "
                  f"{got['not_after'] or '?'}", host=where, **got)


def _url_hop(name: str, setting: str, url: str | None, ca: Path | None, default_port: int,
             tls_schemes: tuple[str, ...] = ("https",), **extra: Any) -> Hop | None:
    if not url:
        return None
    parts = urlsplit(url)
    scheme = "tls" if parts.scheme in tls_schemes else "plain"
    return Hop(name, setting, scheme, parts.hostname or "", parts.port or default_port, ca, **extra)


def configured_hops(settings: Any) -> list[Hop]:
    """Every outbound hop the configuration names (the bridge's own listener included)."""
    s = settings
    hops: list[Hop | None] = [
        _url_hop("bridge", "bridge.public_url", s.bridge.public_url, s.keycloak.ca_file, 443),
        _url_hop("keycloak", "keycloak.url", s.keycloak.url, s.keycloak.ca_file, 443),
        _url_hop("pacs", "pacs.orthanc_url", s.pacs.orthanc_url,
                 getattr(s.pacs, "ca_file", None) or s.keycloak.ca_file, 443),
        _url_hop("scim", "scim.url", s.scim.url, s.scim.ca_file, 443),
    ]
    if s.gateway.orthanc_url and s.gateway.orthanc_url != s.pacs.orthanc_url:
        hops.append(_url_hop("gateway-orthanc", "gateway.orthanc_url", s.gateway.orthanc_url,
                             s.gateway.orthanc_ca_file, 443))
    d = urlsplit(s.directory.url)
    if d.scheme == "ldaps":
        hops.append(Hop("directory", "directory.url", "tls", d.hostname or "", d.port or 636, s.directory.ca_file))
    else:
        hops.append(Hop("directory", "directory.url", "starttls-ldap" if s.directory.start_tls else "plain",
                        d.hostname or "", d.port or 389, s.directory.ca_file))
    if s.audit.syslog_host:
        hops.append(Hop("syslog", "audit.syslog_host", "tls", s.audit.syslog_host, s.audit.syslog_port,
                        s.audit.syslog_ca_file, s.audit.syslog_client_cert_file, s.audit.syslog_client_key_file))
    hops.append(_store_hop(s.store.url))
    rl = s.web.rate_limit_storage_url
    if rl and not rl.startswith("memory://"):
        hops.append(_url_hop("rate-limit-storage", "web.rate_limit_storage_url", rl,
                             s.web.rate_limit_storage_ca_file, 6379, tls_schemes=("rediss",)))
    return [h for h in hops if h is not None]


def _store_hop(url: str) -> Hop | None:
    """PostgreSQL over TCP (SQLite is a local file: no hop)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("postgresql") or not u.host:
        return None
    q = u.query
    mode = q.get("sslmode")
    ca = q.get("sslrootcert")
    scheme = "postgres" if mode in ("verify-full", "verify-ca", "require") else "plain"
    return Hop("store", "store.url", scheme, u.host, u.port or 5432,
               Path(ca) if isinstance(ca, str) else None)
