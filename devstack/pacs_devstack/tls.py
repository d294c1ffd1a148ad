"""One local certificate authority for the whole dev stack, as a hospital PKI would have.

Every server (Keycloak, Samba AD, slapd, rsyslog, the bridge, PostgreSQL) gets a certificate
issued by this CA with SANs for 127.0.0.1, ::1 and localhost, and every client verifies against
`ca.pem`.  A client that authenticates with a certificate (the bridge to the syslog collector,
mutual TLS) gets one from :func:`issue_client`: client use only, its own DNS name, so a server
can admit that name alone (every server certificate above is also valid for client use).
Keys are written 0600.

A second CA, :data:`MODALITY_CA` ("modalities"), issues the DICOM modalities' client certificates
only: Orthanc's DICOM TLS trusts one bundle for every peer (``DicomTlsTrustedCertificates``), so
if that bundle were the stack CA, any server certificate of the stack (the bridge's, Keycloak's)
would open an association.  With its own CA, only a certificate issued for a modality does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pacs_devstack.state import service_dir

CA_NAME = "PACS SSO Bridge Dev CA"
VALIDITY_DAYS = 30
#: the dev stack's CA (every server, every client that is not a modality)
STACK_CA = "ca"
#: the CA of the DICOM modalities' client certificates (Orthanc's DicomTlsTrustedCertificates)
MODALITY_CA = "modality-ca"
_CA_NAMES = {STACK_CA: CA_NAME, MODALITY_CA: "PACS SSO Bridge Dev Modalities CA"}


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path
    ca: Path


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def ca_paths(ca: str = STACK_CA) -> tuple[Path, Path]:
    d = service_dir(ca)
    return d / "ca.pem", d / "ca-key.pem"


def ensure_ca(ca: str = STACK_CA) -> Path:
    """Create the CA ``ca`` (:data:`STACK_CA` or :data:`MODALITY_CA`) once; return its certificate's path."""
    cert_path, key_path = ca_paths(ca)
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=2):
            return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAMES[ca])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # issued certificates of an older CA are now worthless
    for old in service_dir(ca).glob("*-cert.pem"):
        old.unlink()
    return cert_path


#: the DNS name in the bridge's syslog client certificate (rsyslog admits this peer only)
BRIDGE_SYSLOG_CLIENT = "pacs-bridge.audit-client.test"


def issue_client(name: str, dns_name: str, *, ca: str = STACK_CA) -> CertPair:
    """Issue (or reuse) a client-only certificate ``name`` whose SAN and CN are ``dns_name``."""
    return issue(name, client_dns=dns_name, ca=ca)


def issue_modality(aet: str) -> CertPair:
    """A DICOM modality's client certificate (from :data:`MODALITY_CA`), named after its AE title.

    ``pair.ca`` is the *modalities* CA; the modality verifies Orthanc against the stack CA."""
    return issue_client(f"modality-{aet.lower()}", f"{aet.lower()}.modality.test", ca=MODALITY_CA)


def issue(name: str, *, rsa_key: bool = True, extra_dns: tuple[str, ...] = (),
          client_dns: str | None = None, ca: str = STACK_CA) -> CertPair:
    """Issue (or reuse) a server certificate `name` for loopback.

    RSA by default: Samba, slapd (GnuTLS) and Java keystores all take it without surprises.
    """
    ca_cert_path, ca_key_path = ca_paths(ca)
    ensure_ca(ca)
    d = service_dir(ca)
    cert_path, key_path = d / f"{name}-cert.pem", d / f"{name}-key.pem"
    if cert_path.exists() and key_path.exists():
        return CertPair(cert_path, key_path, ca_cert_path)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if rsa_key:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        *[x509.DNSName(n) for n in extra_dns],
    ]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    if client_dns is not None:
        sans, usages = [x509.DNSName(client_dns)], [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_dns or "localhost"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS - 1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertPair(cert_path, key_path, ca_cert_path)


def pem_bundle(pair: CertPair, out: Path) -> Path:
    """``out``: the certificate followed by its private key in one PEM file (0600), the form
    Orthanc's ``SslCertificate`` takes."""
    out.write_bytes(pair.cert.read_bytes() + pair.key.read_bytes())
    out.chmod(0o600)
    return out


def issue_foreign_client(out_dir: Path, dns_name: str, *, ca: str = STACK_CA) -> CertPair:
    """A client certificate for ``dns_name`` signed by a throw-away CA that carries the *name* of the
    stack's CA ``ca`` but another key: what a refusal test presents as "a certificate of a foreign CA".
    Written into ``out_dir`` (``pair.ca`` is the throw-away CA, which nothing trusts)."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAMES[ca])])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pair = CertPair(out_dir / "foreign-cert.pem", out_dir / "foreign-key.pem", out_dir / "foreign-ca.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pair.key, key)
    return pair
