"""Helpers of the browser-login tests: the bridge server handle and a redirect-following 'browser'.

The bridge runs as a real HTTPS server: Keycloak redirects to it and calls its back-channel
logout endpoint, so the Flask test client is not enough here.

One werkzeug server per realm for the whole session (TLS from the dev CA, a free loopback port,
a fresh SQLite store), and the realm's ``pacs-bridge`` client re-pointed at it through the admin
API (back-channel logout URL); restored afterwards.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from flask import Flask
from keycloak import KeycloakAdmin

from bridge.http import pinned_session
from bridge.store.db import engine
from pacs_devstack import demo_data
from pacs_devstack.kc_login import _error_text, _form, fresh_totp

VIEWER_PATH = "/viewer/callback"
LIFETIME, MAX_LIFETIME = 10, 20  # the shortest the configuration allows: rotation is watched to the end


@dataclass
class BridgeServer:
    realm: str
    url: str
    app: Flask
    ca_file: str
    db_url: str

    @property
    def viewer_uri(self) -> str:
        return self.url + VIEWER_PATH

    def http(self) -> requests.Session:
        return pinned_session(self.ca_file)



def _viewer_page() -> str:
    return "<!doctype html><title>viewer</title><p>viewer callback</p>"


def _pacs_bridge_client(admin: KeycloakAdmin) -> tuple[str, dict[str, Any]]:
    """The id and representation of the admin client's realm's ``pacs-bridge`` client."""
    uuid = admin.get_client_id("pacs-bridge")
    assert uuid, f"realm {admin.connection.realm_name}: no pacs-bridge client"
    return uuid, admin.get_client(uuid)


def _repoint_client(admin: KeycloakAdmin, url: str | None) -> str | None:
    """Set the pacs-bridge client's back-channel logout URL (in the admin client's realm); returns
    the previous one."""
    uuid, client = _pacs_bridge_client(admin)
    old = client["attributes"].get("backchannel.logout.url")
    client["attributes"]["backchannel.logout.url"] = url + "/backchannel-logout" if url else old
    client["attributes"]["backchannel.logout.session.required"] = "true"
    admin.update_client(uuid, client)
    return old  # type: ignore[no-any-return]


def restore_backchannel_url(admin: KeycloakAdmin, url: str | None) -> None:
    """Put the pacs-bridge client's back-channel logout URL back exactly as :func:`_repoint_client`
    found it (that function appends the path, so it cannot restore a full URL)."""
    uuid, client = _pacs_bridge_client(admin)
    client["attributes"]["backchannel.logout.url"] = url or ""
    admin.update_client(uuid, client)


def logout_user(admin: KeycloakAdmin, username: str) -> None:
    """End every Keycloak session of ``username`` (Keycloak then sends back-channel logout tokens)."""
    user_id = admin.get_user_id(username)
    assert user_id, f"realm {admin.connection.realm_name}: no user {username!r}"
    admin.user_logout(user_id)


def otp_for(realm: str, username: str) -> Callable[[], str]:
    return fresh_totp(demo_data.user(username)["totp_secret"], f"{realm}/{username}")


@dataclass
class BrowseResult:
    final: str  # the URL the chain ended at (the viewer URI with its fragment, or an error page)
    status: int
    forms: list[str]  # Keycloak forms filled in, in order
    hops: list[str]  # every URL requested (no secret: codes are single-use)
    body: str = ""

    @property
    def fragment(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.final).fragment).items()}


def browse(http: requests.Session, start: str, stop_prefix: str, username: str, password: str,
           otp: Callable[[], str] | None = None, *, stop_at_keycloak_form: str | None = None) -> BrowseResult:
    """Follow the redirect chain as a browser would, filling Keycloak's login and OTP forms,
    until a redirect to ``stop_prefix`` (the viewer) or a non-redirect answer."""
    forms: list[str] = []
    hops = [start]
    res = http.get(start, allow_redirects=False, timeout=30)
    for _ in range(25):
        if res.status_code in (301, 302, 303):
            nxt = urljoin(res.url, res.headers["Location"])
            if nxt.startswith(stop_prefix):
                return BrowseResult(nxt, res.status_code, forms, hops)
            hops.append(nxt)
            res = http.get(nxt, allow_redirects=False, timeout=30)
            continue
        if res.status_code != 200 or "kc-" not in res.text:
            return BrowseResult(res.url, res.status_code, forms, hops, res.text)
        form_id, action, hidden = _form(res.text)
        if form_id in forms:
            # the same form again: Keycloak refused what was entered
            return BrowseResult(res.url, res.status_code, [*forms, form_id], hops, _error_text(res.text))
        if form_id == stop_at_keycloak_form:
            return BrowseResult(res.url, res.status_code, [*forms, form_id], hops, res.text)
        if form_id == "kc-form-login":
            data = {**hidden, "username": username, "password": password, "credentialId": ""}
        elif form_id == "kc-otp-login-form" and otp is not None:
            data = {**hidden, "otp": otp()}
        else:
            return BrowseResult(res.url, res.status_code, [*forms, form_id], hops, _error_text(res.text))
        forms.append(form_id)
        res = http.post(html.unescape(action), data=data, allow_redirects=False, timeout=30)
    raise AssertionError(f"redirect chain did not end after {len(hops)} hops")


def db_engine(server: BridgeServer) -> Any:
    return engine(server.db_url)
