"""Fixtures of the break-glass tests against the real stack: a second bridge (werkzeug, TLS) over the
stack's database and signing keys whose webhook points at a tiny HTTPS receiver with a certificate
from the stack CA (helpers in bg_helpers.py)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from bg_helpers import Receiver, World
from werkzeug.serving import make_server

from bridge.config import Settings, load_config
from bridge.services import Services
from pacs_devstack import tls
from pacs_devstack.realm import AD_REALM
from pacs_devstack.state import free_port


@pytest.fixture(scope="session")
def bg_world(stack: dict[str, Any], directory_ids: dict[str, dict[str, str]],
             settings_at: Callable[..., Settings]) -> Iterator[World]:
    for name in ("keycloak", "samba", "bridge", "orthanc", "rsyslog", "postgres"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run")
    base = load_config(stack["bridge"]["config"])
    if not base.gateway.enabled or base.sync.policy_file is None:
        pytest.fail("the dev stack's bridge has no gateway or no policy (devstack/pacs_devstack/bridge.py)")
    hook_pair = tls.issue("breakglass-webhook")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(hook_pair.cert), str(hook_pair.key))
    receiver.socket = ctx.wrap_socket(receiver.socket, server_side=True)
    threading.Thread(target=receiver.serve_forever, name="breakglass-webhook", daemon=True).start()

    port = free_port()
    origin = f"https://127.0.0.1:{port}"
    settings = settings_at(base, origin, lambda data: data["break_glass"].update({
        "webhook_url": f"https://127.0.0.1:{receiver.server_port}/hooks/break-glass",
        "webhook_ca_file": stack["ca"]["file"]}))
    from bridge.web.app import create_app

    app = create_app(settings, config={"PACS_BRIDGE_RATE_LOGIN": "1000/minute"})
    pair = tls.issue("bridge-gateway-test")
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=(str(pair.cert), str(pair.key)))
    threading.Thread(target=server.serve_forever, name="breakglass-bridge", daemon=True).start()
    world = World(stack, settings, Services(settings), directory_ids[AD_REALM], origin + settings.gateway.prefix,
                  origin, app)
    yield world
    server.shutdown()
    receiver.shutdown()


@pytest.fixture()
def expire_after(bg_world: World) -> Iterator[Callable[[str], None]]:
    """``expire_after(subject_id)``: that subject's break-glass grants end when the test ends, so later
    tests of the session (which check demo users' exact grants) never meet them."""
    import datetime as dt

    from sqlalchemy import update

    from bridge.store.db import write_transaction
    from bridge.store.models import BreakGlassGrant

    subjects: list[str] = []
    yield subjects.append
    now = dt.datetime.now(dt.UTC)
    with write_transaction(bg_world.services.engine) as conn:
        for sub in subjects:
            conn.execute(update(BreakGlassGrant).where(BreakGlassGrant.subject_id == sub,
                                                       BreakGlassGrant.expires_at > now).values(expires_at=now))
