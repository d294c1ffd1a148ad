"""The client address behind reverse proxies: X-Forwarded-For only through trusted hops, and the
same address in rate-limit keys and in every audit event."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore
from bridge.config import load_config
from bridge.core.audit_codes import AuditEventType
from bridge.store import db
from bridge.tokens.auditing import BufferedAuditSink
from bridge.web.app import create_app
from bridge.web.client import AddressedSink, client_address
from tests.unit.web.test_audit_api import ISSUER, token_service

XFF = "X-Forwarded-For"


def make(tmp_path, *, hops: int = 0, rate: dict[str, str] | None = None, **web: Any) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(url)
    store = AuditStore(db.engine(url), CheckpointKey.generate(), checkpoint_every=1000)
    service = token_service()
    sink = BufferedAuditSink(store, ISSUER, flush_seconds=3600)
    service.audit = sink
    settings = load_config(store={"url": url}, web={"trusted_proxy_hops": hops, **web})
    app = create_app(settings, token_service=service, audit_store=store, config=rate or {})

    @app.get("/_whoami")
    def whoami() -> str:
        return client_address()

    return {"app": app, "client": app.test_client(), "store": store, "sink": sink, "service": service}


def last_event(env: dict[str, Any]) -> dict[str, Any]:
    env["sink"].flush()
    return env["store"].tail(1)[0]  # type: ignore[no-any-return]


def whoami(env: dict[str, Any], peer: str = "192.0.2.10", **headers: str) -> str:
    return env["client"].get("/_whoami", headers=headers, environ_base={"REMOTE_ADDR": peer}).get_data(as_text=True)


def test_without_trusted_hops_x_forwarded_for_is_ignored(tmp_path) -> None:
    env = make(tmp_path)
    assert whoami(env, **{XFF: "10.1.1.1"}) == "192.0.2.10"
    assert whoami(env, **{XFF: "10.1.1.1", "X-Real-IP": "10.1.1.2", "Forwarded": "for=10.1.1.3"}) == "192.0.2.10"


def test_one_trusted_hop_takes_the_rightmost_entry_only(tmp_path) -> None:
    env = make(tmp_path, hops=1)
    assert whoami(env, **{XFF: "10.1.1.1"}) == "10.1.1.1"
    # the client forged "127.0.0.1" in front; our one proxy appended the real address
    assert whoami(env, **{XFF: "127.0.0.1, 10.1.1.1"}) == "10.1.1.1"
    assert whoami(env, **{XFF: "127.0.0.1,10.1.1.1"}) == "10.1.1.1"
    # no header (a request that did not pass through the proxy): the TCP peer
    assert whoami(env) == "192.0.2.10"


def test_repeated_x_forwarded_for_headers_do_not_let_the_client_choose(tmp_path) -> None:
    env = make(tmp_path, hops=1)
    client = env["client"]
    resp = client.get("/_whoami", headers=[(XFF, "127.0.0.1"), (XFF, "10.1.1.1")],
                      environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert resp.get_data(as_text=True) == "10.1.1.1"


def test_two_hops_and_header_shorter_than_the_hops(tmp_path) -> None:
    env = make(tmp_path, hops=2)
    assert whoami(env, **{XFF: "127.0.0.1, 10.1.1.1, 10.9.9.9"}) == "10.1.1.1"
    # fewer entries than trusted hops: the proxies' own entries are missing, so nobody known
    assert whoami(env, **{XFF: "10.1.1.1"}) == "invalid"
    assert whoami(env) == "192.0.2.10"  # no header at all: the peer (the proxy's health check)


def test_a_header_the_server_blanks_does_not_make_the_client_the_proxy(tmp_path) -> None:
    """granian passes a header value with a byte above 0x7f as an empty string: behind a proxy that
    appends to the client's own line (``\\xff, <client>``) the header arrives empty."""
    env = make(tmp_path, hops=1)
    assert whoami(env, **{XFF: ""}) == "invalid"
    assert whoami(env, **{XFF: " , "}) == "invalid"


def test_only_x_forwarded_for_is_trusted_not_host_or_proto(tmp_path) -> None:
    env = make(tmp_path, hops=1)

    @env["app"].get("/_url")
    def url() -> str:
        from flask import request

        return request.host_url

    resp = env["client"].get("/_url", headers={"X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "http"},
                             base_url="https://bridge.test")
    assert resp.get_data(as_text=True) == "https://bridge.test/"


@pytest.mark.parametrize("value, expected", [
    ("not-an-ip", "invalid"),
    ("10.1.1.1:1234", "invalid"),
    ("::ffff:10.1.1.1", "10.1.1.1"),     # IPv4-mapped: one client, one spelling
    ("2001:DB8::1", "2001:db8::1"),      # canonical IPv6
    ("[2001:db8::1]", "2001:db8::1"),
])
def test_address_is_normalised(tmp_path, value: str, expected: str) -> None:
    env = make(tmp_path, hops=1)
    assert whoami(env, **{XFF: value}) == expected


def test_audit_event_of_the_token_service_records_the_forwarded_client(tmp_path) -> None:
    env = make(tmp_path, hops=1)
    resp = env["client"].get("/metrics", headers={XFF: "203.0.113.7"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert resp.status_code == 403
    row = last_event(env)
    assert row["type"] == AuditEventType.ACCESS_DENIED.value
    assert row["network_address"] == "203.0.113.7"


def test_audit_event_without_proxy_records_the_peer_not_the_header(tmp_path) -> None:
    env = make(tmp_path, hops=0, metrics={"allow": []})
    env["client"].get("/metrics", headers={XFF: "127.0.0.1"}, environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert last_event(env)["network_address"] == "198.51.100.4"


def test_login_and_token_events_raised_in_a_request_carry_the_address(tmp_path) -> None:
    env = make(tmp_path, hops=1)

    @env["app"].get("/_login_event")
    def login_event() -> str:  # what bridge/web/login.py does after a browser login
        env["service"].audit(AuditEventType.LOGIN_SUCCESS, {"subject": "s-1", "username": "rad.alice"})
        return "ok"

    env["client"].get("/_login_event", headers={XFF: "10.20.30.40"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    row = last_event(env)
    assert row["network_address"] == "10.20.30.40"
    import json

    assert "network_address" not in (json.loads(row["body"]).get("details") or {})


def test_events_outside_a_request_have_no_address(tmp_path) -> None:
    env = make(tmp_path)
    assert isinstance(env["service"].audit, AddressedSink)
    env["service"].audit(AuditEventType.LOGIN_SUCCESS, {"subject": "s-1"})
    assert last_event(env)["network_address"] is None


def test_audit_api_uses_the_same_address(tmp_path) -> None:
    env = make(tmp_path, hops=1)
    env["client"].get("/audit/events", headers={XFF: "10.4.4.4", "Authorization": "Bearer x.y.z"},
                      environ_base={"REMOTE_ADDR": "127.0.0.1"})
    # an invalid token is refused before an actor exists; a token without audit-logs is audited
    from bridge.core.permissions import Permission as P
    from tests.unit.web.test_audit_api import bearer, mint

    resp = env["client"].get("/audit/events", headers={XFF: "10.4.4.4", **bearer(mint(env["service"], {P.VIEW}))},
                             environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert resp.status_code == 403
    assert env["store"].tail(1)[0]["network_address"] == "10.4.4.4"
