"""Every client URL of the bridge is encrypted unless its section says ``allow_plaintext: true``
(issue 12, item 4), and check-config warns when one does.  Each setting is attacked with the
spellings that get past a naive ``startswith``: another case, a leading space, a missing slash, a
scheme-relative URL, no host, the plain scheme, and for PostgreSQL every weaker ``sslmode``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import ConfigError, check_client_url, load_config
from bridge.core.transport import url_problem

PG = "postgresql+psycopg2://bridge@db.hospital.example:5432/bridge"

#: (section, key, a good value, the plain spelling that allow_plaintext admits)
HTTPS_URLS = [
    ("keycloak", "url", "https://kc.hospital.example:8443", "http://kc.hospital.example:8080"),
    ("scim", "url", "https://pacs.hospital.example/scim/v2", "http://pacs.hospital.example/scim/v2"),
    ("pacs", "orthanc_url", "https://pacs.hospital.example", "http://pacs.hospital.example:8042"),
]

#: spellings refused whatever allow_plaintext says (not a URL of the right scheme with a host)
ALWAYS_BAD = ["HTTP://kc.example", "HTTPS://kc.example", "Https://kc.example", " https://kc.example",
              "https://kc.example ", "https:/kc.example", "https:kc.example", "//kc.example", "kc.example",
              "https://", "https:///path", "https://kc\texample", "ftp://kc.example", "javascript://kc.example"]


def _load(tmp_path: Path, data: dict) -> object:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def _problem(tmp_path: Path, data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, data)
    return dict(exc.value.problems)


@pytest.mark.parametrize("section, key, good, plain", HTTPS_URLS)
def test_https_url_accepted_plain_refused_unless_allowed(tmp_path, section, key, good, plain) -> None:
    assert getattr(getattr(_load(tmp_path, {section: {key: good}}), section), key) == good
    problems = _problem(tmp_path, {section: {key: plain}})
    assert f"{section}.{key}" in problems, problems
    assert "allow_plaintext" in problems[f"{section}.{key}"] and "in clear" in problems[f"{section}.{key}"]
    s = _load(tmp_path, {section: {key: plain, "allow_plaintext": True}})
    assert getattr(getattr(s, section), key) == plain


@pytest.mark.parametrize("section, key, good, plain", HTTPS_URLS)
@pytest.mark.parametrize("bad", ALWAYS_BAD)
@pytest.mark.parametrize("allow", [False, True])
def test_https_url_attack_spellings_refused(tmp_path, section, key, good, plain, bad, allow) -> None:
    problems = _problem(tmp_path, {section: {key: bad, "allow_plaintext": allow}})
    assert f"{section}.{key}" in problems, problems


def test_uppercase_scheme_gets_a_hint(tmp_path) -> None:
    assert "lower case (https://)" in _problem(tmp_path, {"keycloak": {"url": "HTTPS://kc"}})["keycloak.url"]


@pytest.mark.parametrize("bad", ["http://bridge.example", "HTTPS://bridge.example", " https://bridge.example",
                                 "https:/bridge.example", "//bridge.example", "https://"])
def test_bridge_public_url_has_no_plaintext_opt_out(tmp_path, bad) -> None:
    assert "bridge.public_url" in _problem(tmp_path, {"bridge": {"public_url": bad}})
    assert "bridge.allow_plaintext" in _problem(tmp_path, {"bridge": {"public_url": bad, "allow_plaintext": True}})


# --- LDAP ----------------------------------------------------------------------------------------

def test_ldaps_accepted_ldap_needs_start_tls_or_opt_in(tmp_path) -> None:
    assert _load(tmp_path, {"directory": {"url": "ldaps://dc1.hospital.example"}})
    assert "directory.url" in _problem(tmp_path, {"directory": {"url": "ldap://dc1.hospital.example"}})
    assert _load(tmp_path, {"directory": {"url": "ldap://dc1.hospital.example", "start_tls": True}})
    assert _load(tmp_path, {"directory": {"url": "ldap://dc1.hospital.example", "allow_plaintext": True}})


@pytest.mark.parametrize("bad", ["LDAP://dc1", "LDAPS://dc1", " ldaps://dc1", "ldaps:/dc1", "//dc1", "ldaps://",
                                 "ldapi://%2fvar%2frun%2fslapd", "http://dc1", "ldaps://dc1 "])
def test_ldap_attack_spellings_refused(tmp_path, bad) -> None:
    assert "directory.url" in _problem(tmp_path, {"directory": {"url": bad, "start_tls": True}})


# --- PostgreSQL ----------------------------------------------------------------------------------

@pytest.mark.parametrize("query, ok", [
    ("?sslmode=verify-full", True),
    ("?sslmode=verify-full&sslrootcert=/etc/ca.pem", True),
    ("?sslrootcert=/etc/ca.pem&sslmode=verify-full", True),
    ("", False),  # absent: libpq's default is prefer
    ("?sslmode=prefer", False),
    ("?sslmode=allow", False),
    ("?sslmode=disable", False),
    ("?sslmode=require", False),  # encrypted, but any certificate
    ("?sslmode=verify-ca", False),  # the CA, not the name
    ("?sslmode=VERIFY-FULL", False),
    ("?sslmode=verify-full&sslmode=disable", False),  # repeated: which one wins depends on the parser
    ("?sslmode=disable&sslmode=verify-full", False),
    ("?sslmode=verify-full%20", False),
    ("?sslmode=", False),
])
def test_postgresql_needs_sslmode_verify_full(tmp_path, query, ok) -> None:
    for scheme in ("postgresql+psycopg2://", "postgresql://"):
        url = PG.replace("postgresql+psycopg2://", scheme) + query
        if ok:
            assert _load(tmp_path, {"store": {"url": url}}).store.url == url
        else:
            problems = _problem(tmp_path, {"store": {"url": url}})
            assert "verify-full" in problems["store.url"] and "allow_plaintext" in problems["store.url"]
            assert _load(tmp_path, {"store": {"url": url, "allow_plaintext": True}})


def test_sqlite_is_local_and_needs_no_tls(tmp_path) -> None:
    assert _load(tmp_path, {"store": {"url": f"sqlite:///{tmp_path}/b.db"}})


# --- Redis ---------------------------------------------------------------------------------------

def test_rediss_accepted_redis_refused_unless_allowed(tmp_path) -> None:
    assert _load(tmp_path, {"web": {"rate_limit_storage_url": "rediss://r.example:6380/0"}})
    problems = _problem(tmp_path, {"web": {"rate_limit_storage_url": "redis://r.example:6379/0"}})
    assert "allow_plaintext" in problems["web.rate_limit_storage_url"]
    assert _load(tmp_path, {"web": {"rate_limit_storage_url": "redis://r.example:6379/0", "allow_plaintext": True}})


@pytest.mark.parametrize("bad", ["REDIS://r:6379", "REDISS://r:6380", " rediss://r:6380", "rediss:/r:6380",
                                 "//r:6380", "rediss://", "unix:///run/redis.sock"])
def test_redis_attack_spellings_refused(tmp_path, bad) -> None:
    problems = _problem(tmp_path, {"web": {"rate_limit_storage_url": bad, "allow_plaintext": True}})
    assert "web.rate_limit_storage_url" in problems


# --- check-config --------------------------------------------------------------------------------

@pytest.mark.parametrize("data, section", [
    ({"keycloak": {"url": "http://kc:8080", "allow_plaintext": True}}, "keycloak"),
    ({"scim": {"url": "http://scim", "allow_plaintext": True}}, "scim"),
    ({"pacs": {"orthanc_url": "http://orthanc:8042", "allow_plaintext": True}}, "pacs"),
    ({"directory": {"url": "ldap://dc1", "allow_plaintext": True}}, "directory"),
    ({"store": {"url": PG, "allow_plaintext": True}}, "store"),
    ({"web": {"rate_limit_storage_url": "redis://r:6379", "allow_plaintext": True}}, "web"),
    # the flag alone warns, even over an https URL: the next edit of the URL would pass silently
    ({"keycloak": {"allow_plaintext": True}}, "keycloak"),
])
def test_check_config_warns_on_every_opt_out(tmp_path, data, section) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["check-config", str(path)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("WARNING:")]
    assert lines == [f"WARNING: {section}.allow_plaintext is true: this hop may run without TLS "
                     "(credentials and patient data readable on the network)"]


def test_check_config_without_opt_out_has_no_warning(tmp_path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"keycloak": {"url": "https://kc"}}))
    res = CliRunner().invoke(main, ["check-config", str(path)])
    assert res.exit_code == 0 and "WARNING" not in res.output, res.output


# --- the hook for other sections (the browser gateway's Orthanc URL) ------------------------------

def test_check_client_url_hook() -> None:
    assert check_client_url("https://orthanc/", key="orthanc_url", tls="https", plain="http") == "https://orthanc"
    with pytest.raises(ValueError, match=r"^orthanc_url: http:// sends .* allow_plaintext"):
        check_client_url("http://orthanc", key="orthanc_url", tls="https", plain="http")
    assert check_client_url("http://orthanc", key="orthanc_url", tls="https", plain="http", allow_plaintext=True)
    with pytest.raises(ValueError, match=r"^orthanc_url: write the scheme in lower case"):
        check_client_url("HTTP://orthanc", key="orthanc_url", tls="https", plain="http", allow_plaintext=True)


@pytest.mark.parametrize("value", [None, 42, "", "https://", "https://\x00x", "https://[::1"])
def test_url_problem_never_raises(value) -> None:
    assert url_problem(value, ("https",))


# --- the Orthanc plugin's URLs of the bridge (no opt-out: they carry tokens) ----------------------

@pytest.mark.parametrize("key", ["jwks_url", "revocation_url", "audit_url"])
@pytest.mark.parametrize("bad", ["http://bridge/jwks", *ALWAYS_BAD])
def test_plugin_bridge_urls_must_be_https(key, bad) -> None:
    from bridge.pacs import plugin_config

    base = {"issuer": "https://bridge", "audience": "pacs", "jwks_url": "https://bridge/jwks",
            "revocation_url": "https://bridge/revocations"}
    assert plugin_config.build(base, "f.json", environ={})
    with pytest.raises(plugin_config.PluginConfigError, match=f"f.json: {key} must be an https:// URL"):
        plugin_config.build({**base, key: bad}, "f.json", environ={})


# --- audit: the syslog client certificate ---------------------------------------------------------

def _pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    c, k = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_syslog_client_certificate_accepted_and_passed_to_the_sender(tmp_path) -> None:
    from bridge.audit.syslog import syslog_sender

    cert, key = _pair(tmp_path, "a")
    s = _load(tmp_path, {"audit": {"syslog_host": "audit.example", "syslog_client_cert_file": str(cert),
                                   "syslog_client_key_file": str(key), "spool_dir": str(tmp_path / "spool")}})
    sender = syslog_sender(s)
    assert sender is not None
    assert (sender.target.client_cert_file, sender.target.client_key_file) == (cert, key)
    path = tmp_path / "bridge.yaml"
    res = CliRunner().invoke(main, ["check-config", str(path)])
    assert res.exit_code == 0 and "with client certificate" in res.output and "WARNING" not in res.output


def test_syslog_without_client_certificate_warns(tmp_path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({"audit": {"syslog_host": "audit.example"}}))
    res = CliRunner().invoke(main, ["check-config", str(path)])
    assert res.exit_code == 0
    assert any(ln.startswith("WARNING: audit: syslog without a client certificate") for ln in res.output.splitlines())


def test_syslog_client_certificate_mistakes_are_named(tmp_path) -> None:
    cert, key = _pair(tmp_path, "a")
    other_cert, other_key = _pair(tmp_path, "b")
    cases = [
        ({"syslog_client_cert_file": str(cert)}, "audit.syslog_client_key_file", "needed too"),
        ({"syslog_client_key_file": str(key)}, "audit.syslog_client_cert_file", "needed too"),
        ({"syslog_client_cert_file": str(tmp_path / "nope.pem"), "syslog_client_key_file": str(key)},
         "audit.syslog_client_cert_file", "cannot read"),
        ({"syslog_client_cert_file": str(cert), "syslog_client_key_file": str(tmp_path / "nope.pem")},
         "audit.syslog_client_key_file", "cannot read"),
        ({"syslog_client_cert_file": str(cert), "syslog_client_key_file": str(other_key)},
         "audit.syslog_client_key_file", "is not the PEM key of the certificate"),
        ({"syslog_client_cert_file": str(key), "syslog_client_key_file": str(cert)},
         "audit.syslog_client_key_file", "is not the PEM key"),
    ]
    for audit, where, what in cases:
        problems = _problem(tmp_path, {"audit": audit})
        assert where in problems and what in problems[where], (audit, problems)
    assert other_cert.exists()
