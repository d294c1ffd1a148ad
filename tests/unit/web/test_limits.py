"""Rate limits: keyed by the client address after trusted hops, sized for shared (NAT) addresses,
configured per endpoint group, and still enforced (per worker) when Redis is down."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from flask import Flask

from bridge.config import WebSection
from bridge.web import client, limits
from tests.unit.web.test_client_address import XFF, make


def bare_app(web: WebSection, group: str = "login", **config: Any) -> Flask:
    """An app with one route in ``group`` and the real defaults/limiter (no other blueprints)."""
    app = Flask("t")
    app.config.update(limits.app_config(web))
    app.config.update(config)
    client.install_proxy_fix(app, web)

    @app.get("/x")
    @limits.limit(group)
    def x() -> str:
        return "ok"

    limits.init_app(app)
    return app


def hit(app: Flask, n: int, peer: str = "192.0.2.1", **headers: str) -> list[int]:
    c = app.test_client()
    return [c.get("/x", headers=headers, environ_base={"REMOTE_ADDR": peer}).status_code for _ in range(n)]


def _per(name: str) -> dict[str, int]:
    import limits as limits_lib

    return {i.GRANULARITY.name: i.amount for i in limits_lib.parse_many(limits.DEFAULTS[limits.config_key(name)])}


def test_a_ward_behind_one_nat_is_not_locked_out_at_shift_change() -> None:
    """40 workstations behind one address log in at shift change: /login, Keycloak, /oidc/callback
    and sometimes a step-up round trip, about 3 requests to the bridge each; many start in the same
    second.  (The old default, 10/minute, refused the fourth workstation.)"""
    app = bare_app(WebSection())
    assert set(hit(app, 20)) == {200}  # 20 workstations in the same second
    assert _per("login")["minute"] >= 40 * 3 * 2  # the whole ward twice over in one minute


def test_token_defaults_leave_room_for_a_vdi_farm() -> None:
    # 200 VDI sessions behind one address, each viewer renewing its 5-minute PACS token
    assert _per("token")["minute"] >= 200 * 2


def test_the_limit_still_binds() -> None:
    app = bare_app(WebSection(rate_limits={"login": "3/minute"}))
    assert hit(app, 4) == [200, 200, 200, 429]


def test_configured_limit_and_flask_override() -> None:
    assert hit(bare_app(WebSection(rate_limits={"login": "2/minute"})), 3) == [200, 200, 429]
    app = bare_app(WebSection(rate_limits={"login": "2/minute"}), PACS_BRIDGE_RATE_LOGIN="4/minute")
    assert hit(app, 5) == [200] * 4 + [429]


def test_each_client_behind_the_proxy_has_its_own_budget() -> None:
    app = bare_app(WebSection(trusted_proxy_hops=1, rate_limits={"login": "2/minute"}))
    assert hit(app, 3, peer="127.0.0.1", **{XFF: "10.0.0.1"}) == [200, 200, 429]
    assert hit(app, 2, peer="127.0.0.1", **{XFF: "10.0.0.2"}) == [200, 200]


def test_forged_x_forwarded_for_does_not_buy_a_new_budget() -> None:
    app = bare_app(WebSection(rate_limits={"login": "2/minute"}))  # no trusted proxy
    codes = [hit(app, 1, **{XFF: f"10.0.0.{i}"})[0] for i in range(4)]
    assert codes == [200, 200, 429, 429]
    app = bare_app(WebSection(trusted_proxy_hops=1, rate_limits={"login": "2/minute"}))
    codes = [hit(app, 1, peer="127.0.0.1", **{XFF: f"10.9.9.{i}, 10.0.0.1"})[0] for i in range(4)]
    assert codes == [200, 200, 429, 429]


def test_apps_do_not_share_counters() -> None:
    web = WebSection(rate_limits={"login": "1/minute"})
    a, b = bare_app(web), bare_app(web)
    assert hit(a, 2) == [200, 429]
    assert hit(b, 1) == [200]


def test_unreachable_redis_falls_back_to_per_worker_limits() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    app = bare_app(WebSection(rate_limit_storage_url=f"redis://127.0.0.1:{port}/0", allow_plaintext=True,
                                   rate_limits={"login": "2/minute"}))
    assert hit(app, 3) == [200, 200, 429]


def test_redis_options_from_the_config(tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    cfg = limits.app_config(WebSection(rate_limit_storage_url="rediss://127.0.0.1:6380/0",
                                       rate_limit_storage_password="pw", rate_limit_storage_ca_file=ca))
    assert cfg["RATELIMIT_STORAGE_URI"] == "rediss://127.0.0.1:6380/0"
    assert cfg["RATELIMIT_STORAGE_OPTIONS"]["password"] == "pw"
    assert cfg["RATELIMIT_STORAGE_OPTIONS"]["ssl_ca_certs"] == str(ca)
    assert cfg["RATELIMIT_STORAGE_OPTIONS"]["ssl_cert_reqs"] == "required"
    assert limits.app_config(WebSection())["RATELIMIT_STORAGE_OPTIONS"] == {}


def test_every_group_has_a_default() -> None:
    from bridge.config import RATE_LIMIT_NAMES

    assert set(limits.DEFAULTS) == {limits.config_key(n) for n in RATE_LIMIT_NAMES}


def test_endpoints_of_one_group_share_one_budget() -> None:
    """/login, /oidc/callback and /logout draw on one "login" budget per client."""
    app = Flask("t")
    app.config.update(limits.app_config(WebSection(rate_limits={"login": "3/minute"})))

    @app.get("/a")
    @limits.limit("login")
    def a() -> str:
        return "ok"

    @app.get("/b")
    @limits.limit("login")
    def b() -> str:
        return "ok"

    limits.init_app(app)
    c = app.test_client()
    codes = [c.get(p, environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code for p in ("/a", "/b", "/a", "/b")]
    assert codes == [200, 200, 200, 429]


def test_unknown_group_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown rate limit group"):
        limits.limit("nope")


def test_real_app_endpoints_are_limited(tmp_path) -> None:
    env = make(tmp_path, rate={"PACS_BRIDGE_RATE_REVOCATIONS": "2/minute"})
    c = env["client"]
    codes = [c.get("/revocations", environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    head = c.head("/revocations", environ_base={"REMOTE_ADDR": "10.1.1.1"})
    assert head.status_code == 429  # HEAD is the same endpoint and the same budget
    assert c.get("/revocations/", environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code == 404
