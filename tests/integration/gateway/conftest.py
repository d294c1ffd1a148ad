"""Fixtures of the gateway's browser tests: the stack's bridge (granian) with its gateway, a
second in-process bridge over the same database and keys with a short idle timeout, studies in
the stack's Orthanc, and PACS tokens minted by the stack's own token service."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gw_browser_helpers import APPS, IN_SCOPE, OUT_OF_SCOPE, Stack
from werkzeug.serving import make_server

from bridge.config import Settings, load_config
from bridge.services import Services
from bridge.web.app import create_app
from pacs_devstack import tls
from pacs_devstack.realm import AD_REALM
from pacs_devstack.state import free_port


def _need(stack: dict[str, Any]) -> None:
    for name in ("keycloak", "samba", "bridge", "orthanc"):
        if name not in stack:
            pytest.skip(f"{name} is not part of this dev stack run")


@pytest.fixture(scope="session")
def gw_stack(stack: dict[str, Any], directory_ids: dict[str, dict[str, str]]) -> Stack:
    _need(stack)
    settings = load_config(stack["bridge"]["config"])
    if not settings.gateway.enabled:
        pytest.fail("the dev stack's bridge has no gateway configured (devstack/pacs_devstack/bridge.py)")
    return Stack(stack, settings, Services(settings), directory_ids[AD_REALM])


@pytest.fixture(scope="session")
def private_gateway(gw_stack: Stack, settings_at: Callable[..., Settings]) -> Iterator[Callable[..., str]]:
    """``start(**gateway_settings)``: a second bridge (werkzeug, TLS) over the stack's database and
    signing keys, its gateway configured with the given keys; returns the gateway's URL.  Its PACS
    tokens carry the stack bridge's issuer, so the stack's Orthanc accepts them; Keycloak's client
    admits any https://127.0.0.1:* callback."""
    servers: list[Any] = []

    def start(**gateway: Any) -> str:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        settings = settings_at(gw_stack.settings, url, lambda data: data["gateway"].update(gateway))
        app = create_app(settings, config={"PACS_BRIDGE_RATE_LOGIN": "1000/minute"})
        pair = tls.issue("bridge-gateway-test")
        server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=(str(pair.cert), str(pair.key)))
        threading.Thread(target=server.serve_forever, name=f"bridge-gateway-test-{port}", daemon=True).start()
        servers.append(server)
        APPS[url + settings.gateway.prefix] = app
        return url + settings.gateway.prefix

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="session")
def department_studies(gw_stack: Stack) -> dict[str, dict[str, str]]:
    """One study per department in the Orthanc the gateway fronts (uploaded by tech.tom with a token
    from the stack's token service): ``{department: upload()}``; more outside Cardiology than inside.
    Patient names share one tag (``GWSCOPE<n>``) so a search can ask for exactly these."""
    import uuid

    tag = f"GWSCOPE{uuid.uuid4().int % 10**9}"
    return {d: gw_stack.upload(f"{tag}^{d.upper()}", department=d) | {"tag": tag}
            for d in (IN_SCOPE, *OUT_OF_SCOPE)}
