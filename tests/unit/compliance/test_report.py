"""The compliance report never shows a control as passed when a piece of its evidence failed or
could not be collected; TLS evidence comes from real handshakes (loopback servers here)."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.compliance import checks, probes, report
from bridge.compliance.checks import Context
from bridge.compliance.evidence import Status, failed, passed, worst
from bridge.config import load_config


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    c, k = tmp / f"{name}.pem", tmp / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


@contextlib.contextmanager
def _loopback_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback TCP server handing each connection to ``handle`` in a thread; yields its port."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            handle(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A loopback TLS server that completes handshakes; yields its port and its certificate."""
    cert, key = _self_signed(tmp_path, "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def handshake(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            conn.close()

    with _loopback_server(handshake) as port:
        yield port, cert


@pytest.fixture
def plain_server() -> Iterator[int]:
    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        conn.close()

    with _loopback_server(answer) as port:
        yield port


def test_a_verified_handshake_passes(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    ev = probes.probe(probes.Hop("keycloak", "keycloak.url", "tls", "127.0.0.1", port, cert))
    assert ev.status is Status.PASS, ev.detail
    assert ev.data["version"] in ("TLSv1.2", "TLSv1.3")


def test_a_certificate_of_another_ca_fails(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_server
    other, _ = _self_signed(tmp_path, "other")
    ev = probes.probe(probes.Hop("keycloak", "keycloak.url", "tls", "127.0.0.1", port, other))
    assert ev.status is Status.FAIL and "verif" in ev.detail.lower()


def test_a_plain_server_behind_an_https_url_fails(plain_server: int, tmp_path: Path) -> None:
    ca, _ = _self_signed(tmp_path, "ca")
    ev = probes.probe(probes.Hop("pacs", "pacs.orthanc_url", "tls", "127.0.0.1", plain_server, ca))
    assert ev.status is Status.FAIL


def test_a_postgres_server_that_answers_no_to_tls_fails() -> None:
    srv = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = srv.accept()
        conn.recv(8)
        conn.sendall(b"N")
        time.sleep(0.2)
        conn.close()

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    ev = probes.probe(probes.Hop("store", "store.url", "postgres", "127.0.0.1", srv.getsockname()[1]))
    t.join()
    srv.close()
    assert ev.status is Status.FAIL and "SSLRequest" in ev.detail


def test_configured_hops_mark_plain_urls_without_probing(tmp_path: Path) -> None:
    settings = load_config(
        keycloak={"url": "http://127.0.0.1:1", "allow_plaintext": True},
        pacs={"orthanc_url": "https://127.0.0.1:2"},
        directory={"url": "ldap://127.0.0.1:389", "allow_plaintext": True},
        store={"url": "postgresql+psycopg2://bridge@127.0.0.1:5432/bridge", "allow_plaintext": True},
        audit={"checkpoint_key_file": str(tmp_path / "k")},
    )
    hops = {h.name: h for h in probes.configured_hops(settings)}
    assert hops["keycloak"].scheme == "plain" and hops["directory"].scheme == "plain"
    assert hops["store"].scheme == "plain" and hops["pacs"].scheme == "tls"
    assert probes.probe(hops["keycloak"]).status is Status.FAIL
    ev = checks.plaintext(Context(settings, "1.0"))[0]
    assert ev.status is Status.FAIL and "keycloak.allow_plaintext" in ev.detail


def test_worst_status_wins_and_nothing_is_missing() -> None:
    assert worst([Status.PASS, Status.MISSING]) is Status.MISSING
    assert worst([Status.MISSING, Status.FAIL, Status.PASS]) is Status.FAIL
    assert worst([]) is Status.MISSING


def _ctx(tmp_path: Path, **sections: Any) -> Context:
    sections.setdefault("audit", {"checkpoint_key_file": str(tmp_path / "k")})
    return Context(load_config(**sections), "1.2.3", now=time.time())


def test_a_collector_that_raises_or_is_absent_gives_missing_never_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: Context) -> list[Any]:
        raise ConnectionError("keycloak down")

    monkeypatch.setattr(checks, "COLLECTORS", {
        "identity": boom,
        "logoff": lambda ctx: [passed("logoff.bridge", "t", "ok")],
        "mfa.rule": lambda ctx: [passed("mfa.rule", "t", "ok")],
        "mfa.accounts": lambda ctx: [failed("mfa.accounts", "t", "2 without OTP")],
    })
    rep = report.build(_ctx(tmp_path))
    by_id = {r.control.id: r for r in rep.controls}
    assert by_id["hipaa-a1-unique-id"].status is Status.MISSING
    assert "keycloak down" in by_id["hipaa-a1-unique-id"].evidence[0].detail
    assert by_id["hipaa-a1-logoff"].status is Status.PASS
    assert by_id["hipaa-d-authentication"].status is Status.FAIL
    assert by_id["hipaa-a1-emergency"].status is Status.MISSING  # nothing registered for breakglass
    assert rep.status is Status.FAIL


def test_the_html_escapes_what_the_evidence_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "COLLECTORS", {
        "identity": lambda ctx: [failed("identity", "t", "<script>alert(1)</script> as username")]})
    html = report.build(_ctx(tmp_path)).to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html


def _junit(path: Path, version: str, failures: int = 0, tests: int = 10) -> Path:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" '
                    f'failures="{failures}" errors="0" skipped="0"><properties>'
                    f'<property name="version" value="{version}"/></properties></testsuite></testsuites>')
    return path


def test_the_test_report_of_this_release(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, compliance={"test_report_dir": str(tmp_path)})
    assert checks.test_report(ctx)[0].status is Status.MISSING
    good = _junit(tmp_path / "pacs-sso-bridge-1.2.3.xml", "1.2.3")
    assert checks.test_report(ctx)[0].status is Status.PASS
    _junit(good, "1.2.3", failures=1)
    assert checks.test_report(ctx)[0].status is Status.FAIL
    _junit(good, "1.2.2")  # another release's report under this name
    assert checks.test_report(ctx)[0].status is Status.FAIL
    _junit(good, "1.2.3", tests=0)
    assert checks.test_report(ctx)[0].status is Status.FAIL


def test_backups_must_be_configured_and_recent(tmp_path: Path) -> None:
    assert checks.backups(_ctx(tmp_path))[0].status is Status.MISSING
    dump = tmp_path / "bridge-1.dump"
    dump.write_text("x")
    ctx = _ctx(tmp_path, compliance={"backups": [
        {"name": "database", "path": str(tmp_path / "bridge-*.dump"), "max_age_hours": 1},
        {"name": "keys", "path": str(tmp_path / "keys-*.tar"), "max_age_hours": 1}]})
    got = {e.check: e.status for e in checks.backups(ctx)}
    assert got == {"backups.database": Status.PASS, "backups.keys": Status.FAIL}
    old = time.time() - 3 * 3600
    os.utime(dump, (old, old))
    assert checks.backups(ctx)[0].status is Status.FAIL


def test_logoff_thresholds(tmp_path: Path) -> None:
    ok = {e.check: e.status for e in checks.logoff(_ctx(tmp_path))}
    assert ok == {"logoff.bridge": Status.PASS}
    long_idle = _ctx(tmp_path, bridge={"session_idle_minutes": 30})
    assert checks.logoff(long_idle)[0].status is Status.FAIL


def test_storage_evidence(tmp_path: Path) -> None:
    """The image store's encryption from Orthanc's configuration; the bridge's SQLite store by
    SQLCipher (or its volume); PostgreSQL is missing evidence here, never a pass."""
    import json as _json

    plain = tmp_path / "orthanc-plain.json"
    plain.write_text(_json.dumps({"StorageDirectory": str(tmp_path / "db"), "IndexDirectory": str(tmp_path / "db")}))
    got = {e.check: e for e in checks.storage(_ctx(tmp_path, compliance={"orthanc_config": str(plain)}))}
    assert got["storage.image_store"].status is Status.FAIL
    assert got["storage.bridge_database"].status is Status.FAIL  # SQLite, no SQLCipher, tmp not on dm-crypt
    enc = _ctx(tmp_path, store={"url": f"sqlite:///{tmp_path}/b.db", "sqlcipher": True})
    got = {e.check: e for e in checks.storage(enc)}
    assert got["storage.image_store"].status is Status.MISSING  # no orthanc_config given
    assert got["storage.bridge_database"].status is Status.PASS
    pg = _ctx(tmp_path, store={"url": "postgresql://b@db.example/b?sslmode=verify-full"})
    assert {e.check: e for e in checks.storage(pg)}["storage.bridge_database"].status is Status.MISSING


def test_review_and_break_glass_evidence(tmp_path: Path) -> None:
    """No review ever run fails; a recent one decided passes; an overdue one fails.  Break-glass:
    the demo policy has emergency roles; an access left unreviewed for more than a week fails."""
    import datetime as _dt

    from bridge.store import db
    from bridge.store.models import BreakGlassGrant, ReviewCampaign, ReviewItem

    root = Path(__file__).resolve().parents[3]
    ctx = _ctx(tmp_path, store={"url": f"sqlite:///{tmp_path}/b.db"},
               sync={"policy_file": str(root / "examples" / "policy.yaml")})
    db.migrate(ctx.settings.store.url)
    assert checks.review(ctx)[0].status is Status.FAIL  # never run
    now = _dt.datetime.fromtimestamp(ctx.now, _dt.UTC)
    with db.session(ctx.services.engine) as s:
        s.add(ReviewCampaign(id=1, started_at=now - _dt.timedelta(days=3), deadline=now + _dt.timedelta(days=11),
                             status="open", started_by="t", summary={}))
        s.add(ReviewItem(campaign_id=1, subject_id="u1", username="u1", role="radiologist", source="policy",
                         queue="q", decision="keep"))
    assert checks.review(ctx)[0].status is Status.PASS
    with db.session(ctx.services.engine) as s:
        s.add(ReviewCampaign(id=2, started_at=now - _dt.timedelta(days=60), deadline=now - _dt.timedelta(days=46),
                             status="closed", started_by="t", summary={}))
    assert checks.review(ctx)[0].status is Status.PASS  # the newest one counts
    got = {e.check: e.status for e in checks.breakglass(ctx)}
    assert got == {"breakglass.procedure": Status.PASS, "breakglass.reviews": Status.PASS}
    with db.session(ctx.services.engine) as s:
        s.add(BreakGlassGrant(id="g1", subject_id="u2", username="er.sam", target_kind="study", target="1.2.3",
                              reason="trauma", permissions=["view"], roles=["clinician"], client_id="c",
                              auth_time=now - _dt.timedelta(days=9), created_at=now - _dt.timedelta(days=9),
                              expires_at=now - _dt.timedelta(days=9)))
    assert {e.check: e.status for e in checks.breakglass(ctx)}["breakglass.reviews"] is Status.FAIL
