"""The web server's set-up: a clean metrics directory, the bind address, TLS and limits as meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.deploy import web_server


def test_the_metrics_directory_is_emptied_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "prom"
    d.mkdir()
    (d / "counter_123.db").write_bytes(b"old run")
    (d / "keep.txt").write_text("not ours")
    monkeypatch.setenv(web_server.MULTIPROC_ENV, str(d))
    web_server.prepare_metrics_dir()
    assert sorted(p.name for p in d.iterdir()) == ["keep.txt"]


def test_a_missing_metrics_directory_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "new" / "prom"
    monkeypatch.setenv(web_server.MULTIPROC_ENV, str(d))
    web_server.prepare_metrics_dir()
    assert d.is_dir() and d.stat().st_mode & 0o077 == 0


def test_without_the_variable_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(web_server.MULTIPROC_ENV, raising=False)
    web_server.prepare_metrics_dir()


@pytest.mark.parametrize(("bind", "expected"), [("127.0.0.1:9443", ("127.0.0.1", 9443)),
                                                ("[::1]:9443", ("::1", 9443)), ("0.0.0.0:1", ("0.0.0.0", 1))])
def test_bind_addresses(bind: str, expected: tuple[str, int]) -> None:
    assert web_server.split_bind(bind) == expected


@pytest.mark.parametrize("bind", ["9443", "host:", ":9443", "host:0", "host:65536", "host:x"])
def test_a_wrong_bind_address_is_named(bind: str) -> None:
    with pytest.raises(ValueError, match="--bind"):
        web_server.split_bind(bind)


def test_a_missing_key_file_is_named_and_nothing_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    code = web_server.main(["--bind", "127.0.0.1:9443", "--cert", str(cert), "--key", str(tmp_path / "k.pem")])
    assert code == 2 and f"--key {tmp_path / 'k.pem'}: no such file" in capsys.readouterr().err


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return tmp_path / "c.pem", tmp_path / "k.pem"


def test_a_key_that_is_not_the_certificates_is_named(tmp_path: Path) -> None:
    cert, _ = _pair(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, key = _pair(other)
    with pytest.raises(ValueError, match=r"not a matching PEM certificate and key"):
        web_server.build_server("127.0.0.1:9443", cert, key)
    (tmp_path / "junk.pem").write_text("x")
    with pytest.raises(ValueError, match=r"junk\.pem"):
        web_server.build_server("127.0.0.1:9443", cert, tmp_path / "junk.pem")


def test_the_server_is_configured_as_documented(tmp_path: Path) -> None:
    from granian.constants import HTTPModes, Interfaces

    _pair(tmp_path)
    s = web_server.build_server("127.0.0.1:9443", tmp_path / "c.pem", tmp_path / "k.pem")
    assert s.interface == Interfaces.WSGI and s.http == HTTPModes.http1 and not s.websockets
    assert s.target == "bridge.web.wsgi:app" and (s.bind_addr, s.bind_port) == ("127.0.0.1", 9443)
    assert s.workers == web_server.WORKERS and s.blocking_threads == web_server.THREADS
    assert s.respawn_failed_workers  # a crashed worker comes back, as under any supervisor
    assert s.http1_settings.max_buffer_size == web_server.MAX_HEAD_BYTES
    assert s.log_access and "%(path)s" in s.log_access_format
    assert "query_string" not in s.log_access_format  # codes and tokens travel in query strings
    ssl = s.ssl_ctx
    assert ssl[0] and str(ssl[1]) == str(tmp_path / "c.pem")


def test_the_process_is_named_for_operators() -> None:
    """``top`` and ``ss -p`` show pacs-bridge-web, not python (run in a child: the name is the process's)."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from bridge.deploy import web_server; web_server.name_process(); "
            "print(Path('/proc/self/comm').read_text().strip())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == web_server.PROCESS_NAME.decode()


def test_environment_variables_that_would_pose_as_request_fields_are_removed() -> None:
    env = {"HTTP_X_FORWARDED_FOR": "10.0.0.1", "HTTP_AUTHORIZATION": "Bearer x", "HTTP_PROXY": "http://p:3128",
           "REMOTE_ADDR": "10.0.0.2", "PATH_INFO": "/token", "HTTPS_PROXY": "http://p:3128",
           "PACS_BRIDGE_CONFIG": "/etc/pacs-bridge/bridge.yaml", "PATH": "/usr/bin", "http_proxy": "http://p:3128"}
    removed = web_server.scrub_environment(env)
    assert removed == ["HTTP_AUTHORIZATION", "HTTP_PROXY", "HTTP_X_FORWARDED_FOR", "PATH_INFO", "REMOTE_ADDR"]
    assert env == {"HTTPS_PROXY": "http://p:3128", "PACS_BRIDGE_CONFIG": "/etc/pacs-bridge/bridge.yaml",
                   "PATH": "/usr/bin", "http_proxy": "http://p:3128"}


def test_granian_builds_each_environ_from_the_process_environment() -> None:
    """Why the scrub exists: if granian stops copying os.environ into requests, it can go."""
    import inspect

    from granian import wsgi

    assert "dict(os.environ)" in inspect.getsource(wsgi._callback_wrapper)
