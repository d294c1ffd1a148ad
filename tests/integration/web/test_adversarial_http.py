"""Attacks on the bridge's own HTTP side and its HAProxy front, against the live dev stack.

Through HAProxy (TLS, ``option forwardfor``, one trusted hop): plain HTTP, forged forwarding
headers, odd spellings of a path; on both instances at once: a replayed audit-intake batch; on a
2-worker web server with Redis-shared limits: secret guessing on /orthanc-auth and the intake, and an
IPv6 client walking its /64.  Each names the hole it guards in its docstring.
"""

from __future__ import annotations

import base64
import secrets
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.audit.store import open_store
from bridge.config import load_config
from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType
from bridge.http import pinned_session
from pacs_devstack.service import StackContext

pytestmark = pytest.mark.integration


def _need(stack: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in stack]
    if missing:
        pytest.skip(f"dev stack runs without {', '.join(missing)} (PACS_BRIDGE_DEVSTACK_ONLY)")


@pytest.fixture(scope="module")
def front(stack: dict[str, Any]) -> dict[str, Any]:
    _need(stack, "haproxy", "bridge", "bridge2", "postgres")
    return {"url": stack["haproxy"]["url"], "ca": stack["ca"]["file"], "backends": stack["haproxy"]["backends"],
            "settings": load_config(stack["bridge"]["config"])}


def _records(front: dict[str, Any], needle: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Audit records whose text contains ``needle`` (token events are flushed in batches)."""
    store = open_store(front["settings"], signing=False)
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in store.tail(300) if needle in str(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def _send_raw(front: dict[str, Any], raw: bytes) -> bytes:
    """``raw`` as bytes on one TLS connection to HAProxy (no client library tidies the request up);
    the start of the answer."""
    import ssl

    port = int(front["url"].rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=front["ca"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp, \
            ctx.wrap_socket(tcp, server_hostname="127.0.0.1") as s:
        s.sendall(raw)
        return s.recv(4096)


def test_haproxy_answers_no_plain_http(front: dict[str, Any]) -> None:
    """The front is TLS only: a plain request gets no HTTP answer (no redirect, no page)."""
    port = int(front["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            data = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            data = b""
    assert not data.startswith(b"HTTP/"), data[:200]


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-For": "10.9.9.9"},
    {"X-Forwarded-For": "10.9.9.9, 10.8.8.8"},
    {"X-Forwarded-For": "unknown"},
    {"X-Forwarded-For": "[2001:db8::1]"},
    {"X-Forwarded-For": "10.9.9.9 ,  ,10.8.8.8"},
    {"Forwarded": "for=10.9.9.9;proto=https"},
    {"X-Real-IP": "10.9.9.9"},
])
def test_forged_forwarding_headers_through_haproxy_leave_the_real_client(front: dict[str, Any],
                                                                        headers: dict[str, str]) -> None:
    """The recorded address of a refused /orthanc-auth login is HAProxy's view of the client
    (loopback here), whatever the client wrote."""
    probe = f"probe-{secrets.token_hex(6)}"
    basic = "Basic " + base64.b64encode(f"{probe}:guess".encode()).decode()
    with pinned_session(front["ca"]) as s:
        r = s.post(front["url"] + "/orthanc-auth/tokens/validate", json={}, timeout=10,
                   headers={**headers, "Authorization": basic})
    assert r.status_code == 401
    rows = _records(front, probe)
    assert rows, f"no audit record of the refused login {probe}"
    assert {row["network_address"] for row in rows} == {"127.0.0.1"}, rows


def test_a_repeated_x_forwarded_for_header_through_haproxy(front: dict[str, Any]) -> None:
    """Two X-Forwarded-For header lines: the rightmost entry is still HAProxy's."""
    probe = f"probe-{secrets.token_hex(6)}"
    basic = "Basic " + base64.b64encode(f"{probe}:guess".encode()).decode()
    raw = (f"POST /orthanc-auth/tokens/decode HTTP/1.1\r\nHost: localhost\r\nAuthorization: {basic}\r\n"
           "X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-For: 10.2.2.2\r\nContent-Type: application/json\r\n"
           "Content-Length: 2\r\nConnection: close\r\n\r\n{}").encode()
    head = _send_raw(front, raw)
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
    rows = _records(front, probe)
    assert rows and {row["network_address"] for row in rows} == {"127.0.0.1"}, rows


@pytest.mark.parametrize("path", ["/token", "/audit/events", "/revoke"])
def test_a_chunked_body_is_refused_with_411(front: dict[str, Any], path: str) -> None:
    """A chunked body that stops half-way ends cleanly for the app under granian, so a cut-off form
    or batch would read as whole: every body needs a Content-Length (a short one is noticed)."""
    raw = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\ntoken\r\n0\r\n\r\n").encode()
    head = _send_raw(front, raw)
    assert head.startswith(b"HTTP/1.1 411"), head[:200]


@pytest.mark.parametrize("spelling", ["X_Forwarded_For", "x_forwarded_for", "X-Forwarded_For"])
def test_an_underscore_spelling_of_x_forwarded_for_is_refused_at_haproxy(front: dict[str, Any], spelling: str) -> None:
    """The web server maps ``X_Forwarded_For`` to the same key as ``X-Forwarded-For``, and a later
    spelling replaces HAProxy's line: sent after the real header, it would choose the client's address."""
    probe = f"probe-{secrets.token_hex(6)}"
    basic = "Basic " + base64.b64encode(f"{probe}:guess".encode()).decode()
    raw = (f"POST /orthanc-auth/tokens/decode HTTP/1.1\r\nHost: localhost\r\nAuthorization: {basic}\r\n"
           f"X-Forwarded-For: 10.1.1.1\r\n{spelling}: 10.99.1.1\r\nContent-Type: application/json\r\n"
           "Content-Length: 2\r\nConnection: close\r\n\r\n{}").encode()
    head = _send_raw(front, raw)
    assert head.startswith(b"HTTP/1.1 400"), head[:200]
    assert not _records(front, probe, timeout=1.0)


@pytest.mark.parametrize("path", ["//introspect", "/introspect/", "/INTROSPECT", "/introspect;x", "/introspect%2F",
                                  "/introspect%00", "/%69ntrospect"])
def test_other_spellings_of_a_limited_path_reach_no_handler(front: dict[str, Any], path: str) -> None:
    """Rate limits belong to endpoints, not paths: a spelling that is not the path either reaches the
    same endpoint (same budget) or none at all."""
    with pinned_session(front["ca"]) as s:
        r = s.post(front["url"] + path, data={"token": "x"}, timeout=10, allow_redirects=False)
    if r.status_code in (301, 302, 307, 308):
        assert r.headers["Location"].rstrip("/").endswith("/introspect"), r.headers["Location"]
    else:
        # /%69ntrospect is /introspect once decoded: the same endpoint, so the same budget (401: no client)
        assert r.status_code in (400, 401, 404, 405), (path, r.status_code, r.text[:200])


def test_an_intake_batch_replayed_on_both_instances_at_once_is_stored_once(front: dict[str, Any],
                                                                            stack: dict[str, Any]) -> None:
    """The Orthanc plugin re-sends a batch whose answer it lost; HAProxy may retry it on the other
    instance while the first still works on it.  Every answer is 202 and each event is stored once."""
    secret = StackContext(ca_file=Path(front["ca"])).secret(stack["bridge"]["audit_ingest_secret"])
    marker = f"replay-{secrets.token_hex(6)}"
    batch = [ev.AuditEvent(AuditEventType.STUDY_ACCESSED, actor=ev.Actor("s@i", "rad.replay"),
                           objects=(ev.study(f"1.2.826.0.1.{i}"),), details={"marker": marker},
                           event_id=str(uuid.uuid4())).to_dict() for i in range(20)]
    urls = list(front["backends"].values()) * 4

    def send(url: str) -> int:
        with pinned_session(front["ca"]) as s:
            return s.post(url + "/audit/events", json={"events": batch}, timeout=30,
                          headers={"Authorization": f"Bearer {secret}"}).status_code

    with ThreadPoolExecutor(len(urls)) as pool:
        codes = list(pool.map(send, urls))
    assert set(codes) == {202}, codes
    rows = _records(front, marker)
    assert len(rows) == len(batch), len(rows)


def test_a_huge_unauthenticated_body_is_refused(front: dict[str, Any]) -> None:
    """Nobody makes the bridge buffer a large body before authenticating (a 20 MB form)."""
    body = b"token=" + b"A" * (20 * 1024 * 1024)
    with pinned_session(front["ca"]) as s:
        try:
            r = s.post(front["url"] + "/introspect", data=body, timeout=60,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        except requests.ConnectionError:
            return  # closed on us: refused
    assert r.status_code in (401, 413), (r.status_code, r.text[:200])


def test_readyz_tells_nothing_but_readiness(front: dict[str, Any]) -> None:
    with pinned_session(front["ca"]) as s:
        r = s.get(front["url"] + "/readyz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    server = r.headers.get("Server", "")
    assert not any(ch.isdigit() for ch in server), server  # no version
    assert r.headers.get("Strict-Transport-Security", "").startswith("max-age="), r.headers


# -------------------------------------------------------------- a 2-worker web server with Redis limits
def test_orthanc_auth_secret_guessing_is_limited_across_workers(start_web_server: Any) -> None:
    """/orthanc-auth checks the introspection client's secret: it draws on the introspect budget
    (no limit at all before)."""
    g = start_web_server({"PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_INTROSPECT": "5/hour"})
    basic = {"Authorization": "Basic " + base64.b64encode(b"pacs-tools:guess").decode()}

    def one(_: int) -> int:
        with g.session() as s:
            return s.post(g.url + "/orthanc-auth/tokens/validate", json={}, headers=basic, timeout=30).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(12)))
    assert codes.count(401) == 5 and codes.count(429) == 7, codes


def test_audit_intake_secret_guessing_is_limited(start_web_server: Any) -> None:
    g = start_web_server({"PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_AUDIT": "3/hour"})
    with g.session() as s:
        codes = [s.post(g.url + "/audit/events", json={"events": []}, timeout=30,
                        headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429], codes


def test_an_ipv6_client_walking_its_64_keeps_one_budget(start_web_server: Any) -> None:
    """Behind a trusted proxy, an IPv6 client may use any address of its /64: one budget."""
    g = start_web_server({"PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_REVOCATIONS": "3/hour",
                        "PACS_BRIDGE_WEB__TRUSTED_PROXY_HOPS": "1"})
    with g.session() as s:
        codes = [s.get(g.url + "/revocations", timeout=30,
                       headers={"X-Forwarded-For": f"2001:db8:7:7::{i:x}"}).status_code for i in range(1, 7)]
        other = s.get(g.url + "/revocations", headers={"X-Forwarded-For": "2001:db8:7:8::1"}, timeout=30)
    assert codes == [200, 200, 200, 429, 429, 429], codes
    assert other.status_code == 200
