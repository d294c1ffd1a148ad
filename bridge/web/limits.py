"""Per-client-address rate limits (Flask-Limiter), one limiter per app, counters in memory or Redis.

Blueprints mark their endpoints with :func:`limit` (a name, no limiter yet); :func:`init_app`
builds the app's limiter from ``web.*`` and wraps every marked endpoint.  One limiter per app
(not one per module) because the storage URL, key prefix and fallback are per deployment, and
tests build many apps in one process.

The limit of each group comes from (highest first) the app config key ``PACS_BRIDGE_RATE_<NAME>``
(tests, benchmarks, env ``PACS_BRIDGE_FLASK_PACS_BRIDGE_RATE_<NAME>``), ``web.rate_limits``,
:data:`DEFAULTS`.  The key is :func:`bridge.web.client.client_address` (an IPv6 address counts for its /64, see
:func:`rate_key`), so behind a NAT every
workstation of a ward shares one budget: the defaults are sized for that (docs/configuration.md).
Accounts are protected by Keycloak's brute-force detection, not here: a per-address lockout would
lock a whole ward out because of one mistyped password.

With ``redis://`` / ``rediss://`` the counters are shared by every web server worker and bridge
instance.  If Redis is unreachable, each worker falls back to its own in-memory counters (still a
limit, per worker) and goes back to Redis when it answers again: an outage of the limiter's store
must not stop a hospital's logins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app
from flask_limiter import Limiter

from bridge.config import RATE_LIMIT_NAMES, WebSection
from bridge.web.client import client_address

#: per client address; see docs/configuration.md ("Rate limits") for the sizing of each
DEFAULTS = {
    "PACS_BRIDGE_RATE_TOKEN": "30/second;600/minute",
    "PACS_BRIDGE_RATE_INTROSPECT": "200/second",
    "PACS_BRIDGE_RATE_REVOKE": "10/second;300/minute",
    "PACS_BRIDGE_RATE_REVOCATIONS": "20/second",
    "PACS_BRIDGE_RATE_LOGIN": "20/second;600/minute",
    "PACS_BRIDGE_RATE_METRICS": "5/second",
    "PACS_BRIDGE_RATE_BACKCHANNEL_LOGOUT": "20/second;300/minute",
    "PACS_BRIDGE_RATE_AUDIT": "20/second;600/minute",
    # per USER, not per address (bridge/web/breakglass.py): an emergency is rare; a burst of
    # requests is a misuse (or a stolen session) the alerts already report
    "PACS_BRIDGE_RATE_BREAK_GLASS": "3/minute;10/hour",
}
#: an IPv6 host picks any address of its /64 at will (privacy addresses, RFC 8981): the budget is
#: the /64's, or each of its 2**64 addresses would bring a fresh one
IPV6_PREFIX = 64
EXTENSION = "pacs_bridge_limiter"
_MARK = "_pacs_bridge_rate_limit"
_EXEMPT = "_pacs_bridge_rate_limit_exempt"
F = TypeVar("F", bound=Callable[..., Any])


def config_key(name: str) -> str:
    return f"PACS_BRIDGE_RATE_{name.upper()}"


def limit(name: str) -> Callable[[F], F]:
    """Mark a view with the limit group ``name``; :func:`init_app` applies it."""
    if name not in RATE_LIMIT_NAMES:
        raise ValueError(f"unknown rate limit group {name!r}")

    def mark(view: F) -> F:
        setattr(view, _MARK, name)
        return view

    return mark


def exempt(view: F) -> F:
    """Mark a view the limiter must not even look at (the gateway's proxy, which has no limit of its
    own: without the mark, Flask-Limiter still resolves the route's limits on every request)."""
    setattr(view, _EXEMPT, True)
    return view


def app_config(web: WebSection) -> dict[str, Any]:
    """Flask config from ``web.*``: the limits and Flask-Limiter's storage settings."""
    options: dict[str, Any] = {}
    if web.rate_limit_storage_password is not None:
        options["password"] = web.rate_limit_storage_password.get_secret_value()
    if web.rate_limit_storage_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        if web.rate_limit_storage_ca_file is not None:
            options["ssl_ca_certs"] = str(web.rate_limit_storage_ca_file)
    if not web.rate_limit_storage_url.startswith("memory://"):
        # fail fast rather than hold a login for the client's default (no) timeout
        options.update(socket_timeout=2, socket_connect_timeout=2)
    return {
        **DEFAULTS,
        **{config_key(name): value for name, value in web.rate_limits.items()},
        "RATELIMIT_STORAGE_URI": web.rate_limit_storage_url,
        "RATELIMIT_STORAGE_OPTIONS": options,
        "RATELIMIT_KEY_PREFIX": "pacs-bridge",
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_HEADERS_ENABLED": True,
    }


def init_app(app: Flask) -> Limiter:
    """Build the app's limiter and wrap every endpoint marked with :func:`limit` (call this after
    all blueprints are registered)."""
    limiter = Limiter(key_func=rate_key, default_limits=[])
    limiter.init_app(app)
    _no_check_before_every_request(app, limiter)
    for endpoint, view in list(app.view_functions.items()):
        if getattr(view, _EXEMPT, False):
            limiter.exempt(view)
            continue
        name = getattr(view, _MARK, None)
        if name is not None:
            # one budget per group and client: /login, /oidc/callback and /logout draw on the same one
            app.view_functions[endpoint] = limiter.shared_limit(_provider(config_key(name)), scope=name)(view)
    app.extensions[EXTENSION] = limiter
    return limiter


def _no_check_before_every_request(app: Flask, limiter: Limiter) -> None:
    """Drop the limiter's check that runs before *every* request.

    Why: the app has no default or application-wide limit (``default_limits=[]``); every limit is a
    decorator on its view (:func:`limit`), and flask-limiter's decorator checks its limits itself
    when the view is called.  The before-request check therefore only ever found nothing to do, at
    about 0.1 ms per request: on the gateway's proxy route (hundreds of image requests a minute per
    viewer, issue 11's added-latency target) that was a tenth of the bridge's own time.  Headers
    and the per-request context are still handled by the limiter's after/teardown hooks.
    ``tests/unit/web/test_limits.py`` holds that every limited route still answers 429."""
    hooks = app.before_request_funcs.get(None, [])
    app.before_request_funcs[None] = [h for h in hooks if getattr(h, "__self__", None) is not limiter]


def hit_for(name: str, who: str) -> bool:
    """Draw on ``who``'s own budget of group ``name`` (a user, not the client address: a per-user
    limit such as break-glass requests, checked once the user is known).  False: spent."""
    from limits import parse_many

    limiter: Limiter = current_app.extensions[EXTENSION]
    items = parse_many(_provider(config_key(name))())
    strategy = limiter.limiter
    if not all(strategy.test(item, name, who) for item in items):
        return False
    for item in items:
        strategy.hit(item, name, who)
    return True


def rate_key() -> str:
    """Whose budget a request draws on: the client address, an IPv6 one widened to its /64
    (audit records keep the full address; only the budget is shared)."""
    addr = client_address()
    if ":" not in addr:
        return addr
    return str(ipaddress.ip_network(f"{addr.split('%')[0]}/{IPV6_PREFIX}", strict=False))


def _provider(key: str) -> Callable[[], str]:
    return lambda: str(current_app.config.get(key, DEFAULTS[key]))
