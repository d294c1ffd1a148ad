"""The Authlib Flask client for Keycloak (authorization code + PKCE S256 + state + nonce).

Authlib does the protocol: it generates ``state``, ``nonce`` and the PKCE verifier, keeps them in
the session until the callback, redeems the code and validates the ID token (signature against
the realm JWKS, ``iss`` from the discovery document, ``aud`` = our client id, ``exp``/``iat``,
``nonce``, ``at_hash``).  This module only configures it: the dev CA as the one trust anchor,
``trust_env`` off so that ``REQUESTS_CA_BUNDLE`` cannot silently replace that anchor.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_client import OAuth
from flask import Flask

from bridge.config import Settings

NAME = "keycloak"


def issuer(settings: Settings) -> str:
    return f"{settings.keycloak.url}/realms/{settings.keycloak.realm}"


def register(app: Flask, settings: Settings) -> Any:
    """Register the Keycloak client on ``app``; returns Authlib's client object."""
    kc = settings.keycloak
    if kc.client_secret is None:
        raise ValueError("keycloak.client_secret: the browser login needs the pacs-bridge client secret")
    oauth = OAuth(app)
    return oauth.register(
        NAME,
        client_id=kc.client_id,
        client_secret=kc.client_secret.get_secret_value(),
        server_metadata_url=issuer(settings) + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": "openid",
            "code_challenge_method": "S256",
            "verify": str(kc.ca_file) if kc.ca_file else True,
            "trust_env": False,
            "timeout": 10,
        },
    )
