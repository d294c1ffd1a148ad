"""Fixtures: the bridge double and a verifier wired to it."""

from __future__ import annotations

import pytest
from pacs_bridge_double import ISSUER, JWKS_URL, REVOKED_URL, FakeBridge

from bridge.core.verifier import Verifier, VerifierConfig
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository


@pytest.fixture
def bridge() -> FakeBridge:
    ring = KeyRing(
        MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()), refresh_seconds=0
    )
    return FakeBridge(ring)


@pytest.fixture
def verifier(bridge: FakeBridge) -> Verifier:
    cfg = VerifierConfig(
        issuer=ISSUER,
        audience="pacs",
        jwks_url=JWKS_URL,
        revocation_url=REVOKED_URL,
        jwks_min_refresh_seconds=30,
        revocation_refresh_seconds=0,
    )
    return Verifier(cfg, fetch=bridge.fetch)
