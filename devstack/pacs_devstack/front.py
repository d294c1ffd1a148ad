"""The bridge's public entry point in the dev stack: HAProxy, when it fronts the two instances.

Why a module of its own: the bridge service needs the front's URL before anything starts (it is
the public URL: token issuer, Keycloak's callback), and the HAProxy service needs the bridge
instances (its backends).  With the front's name, port and URL here, ``haproxy`` imports
``bridge`` and both import this module, so no two service modules import each other.
"""

from __future__ import annotations

from pacs_devstack import state
from pacs_devstack.service import sticky_port

#: the service that fronts the instances when it is part of the stack
NAME = "haproxy"


def fronted() -> bool:
    """Whether HAProxy fronts the bridge in this stack (recorded by `stack.up` before any start)."""
    return NAME in state.read_stack().get(state.SELECTION, {}).get("services", ())


def port() -> int:
    """HAProxy's port, chosen once per `up` (Keycloak's realm import needs the public URL first)."""
    return sticky_port(NAME)


def url() -> str:
    return f"https://127.0.0.1:{port()}"
