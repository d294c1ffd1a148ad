"""The one Flask-Limiter instance; each blueprint decorates its endpoints with its own limit.

Limits are per client address and read from the app config at request time (keys
``PACS_BRIDGE_RATE_<NAME>``), so tests and benchmarks can set them per app.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

DEFAULTS = {
    "PACS_BRIDGE_RATE_TOKEN": "30/second;600/minute",
    "PACS_BRIDGE_RATE_INTROSPECT": "200/second",
    "PACS_BRIDGE_RATE_REVOKE": "10/second;300/minute",
    "PACS_BRIDGE_RATE_REVOCATIONS": "20/second",
    "PACS_BRIDGE_RATE_LOGIN": "10/minute",
    "PACS_BRIDGE_RATE_BACKCHANNEL_LOGOUT": "20/second;300/minute",
}

limiter = Limiter(key_func=get_remote_address, storage_uri="memory://", default_limits=[])


def limit(name: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator: the configured limit ``PACS_BRIDGE_RATE_<NAME>``."""
    key = f"PACS_BRIDGE_RATE_{name.upper()}"
    return limiter.limit(lambda: str(current_app.config.get(key, DEFAULTS[key])))
