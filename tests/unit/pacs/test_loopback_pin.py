"""The plugin's loopback call to its own Orthanc (bridge/pacs/dicomweb.py ``loopback_sender``) carries
a one-time pass and the outer request's token context: over HTTPS it goes only to a listener that
presents Orthanc's own certificate (the ``SslCertificate`` PEM, key included), never to another."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bridge.pacs.dicomweb import loopback_sender


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _bundle(path: Path, ca_name: str) -> Path:
    """A server certificate for ``pacs.example`` (not 127.0.0.1) issued by a new CA, then its key: one PEM."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("pacs.example")).issuer_name(_name(ca_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pacs.example")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS listener on loopback standing in for Orthanc; (port, its SslCertificate bundle)."""
    own = _bundle(tmp_path / "own.pem", "Site CA")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(own)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], own
    server.shutdown()


def test_the_own_certificate_is_accepted_whatever_it_names(orthanc: tuple[int, Path]) -> None:
    port, own = orthanc
    status, mime, body = loopback_sender(port, True, str(own), timeout=5)("GET", "/x", {"Host": "h"}, None)
    assert status == 200 and mime == "application/json"
    body.close()


def test_another_certificate_even_from_a_ca_of_the_same_name_is_refused(orthanc: tuple[int, Path],
                                                                       tmp_path: Path) -> None:
    port, _ = orthanc
    other = _bundle(tmp_path / "other.pem", "Site CA")
    with pytest.raises(ssl.SSLError):
        loopback_sender(port, True, str(other), timeout=5)("GET", "/x", {"Host": "h"}, None)


def test_without_a_certificate_to_pin_nothing_is_sent(orthanc: tuple[int, Path]) -> None:
    port, _ = orthanc
    with pytest.raises(ssl.SSLError, match="SslCertificate"):
        loopback_sender(port, True, None, timeout=5)("GET", "/x", {"Host": "h"}, None)
