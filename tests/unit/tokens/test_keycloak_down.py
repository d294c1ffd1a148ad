"""Keycloak unreachable during a token exchange: 503 + Retry-After (the client retries), never a
500 and never an ``invalid_grant`` that would tell a viewer its login is bad.  The real Keycloak
stopped and restarted is tests/integration/ha/test_faults_shared.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.config import load_config
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.tokens.claims import TokenSettings
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator, TokenService
from bridge.tokens.store import Assignment
from bridge.web.app import create_app
from tests.doubles import MemoryAssignmentSource, MemoryRevocationStore
from tests.unit.tokens.test_service_http import ISSUER, KC_ISS, KC_JWK, exchange, kc_token


class Keycloak:
    """The JWKS endpoint of a Keycloak that can be switched off (connection refused)."""

    def __init__(self) -> None:
        self.up = True
        self.garbage = False
        self.calls = 0

    def fetch(self, url: str, body: bytes | None, headers: Any) -> bytes:
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.garbage:  # a proxy's error page in front of a Keycloak that is starting
            return b"<html>502 Bad Gateway</html>"
        return json.dumps({"keys": [KC_JWK]}).encode()


@pytest.fixture
def env() -> dict[str, Any]:
    kc = Keycloak()
    now = [1_000_000.0]
    events: list[tuple[AuditEventType, dict]] = []
    validator = KeycloakTokenValidator(KeycloakSettings(KC_ISS, "pacs-bridge", frozenset({"pacs-viewer"})),
                                       fetch=kc.fetch)
    service = TokenService(
        ring=KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret())),
        settings=TokenSettings(issuer=ISSUER, audience="pacs"),
        mfa_rule=mfa.MfaRule(), keycloak=validator,
        # roles come from the assignment store only (no Keycloak realm-role fallback for directory accounts)
        assignments=MemoryAssignmentSource({"guid-alice": [Assignment("radiologist", {})]}),
        revocations=MemoryRevocationStore(), role_permissions=DEFAULT_ROLE_PERMISSIONS,
        audit=lambda kind, details: events.append((kind, dict(details))),
    )
    app = create_app(load_config(tokens={"clients": [{"client_id": "pacs-viewer"}]}), token_service=service,
                     config={"PACS_BRIDGE_RATE_TOKEN": "1000/second"})
    return {"client": app.test_client(), "kc": kc, "events": events, "now": now, "validator": validator}


def test_keycloak_down_before_keys_were_loaded_is_503_with_retry_after(env: dict[str, Any]) -> None:
    env["kc"].up = False
    r = exchange(env["client"], kc_token())
    assert r.status_code == 503, r.json
    assert r.json["error"] == "temporarily_unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["Cache-Control"] == "no-store"
    # not a decision about the user: nothing is audited as a denial
    assert not [e for e in env["events"] if e[0] in (AuditEventType.ACCESS_DENIED, AuditEventType.MFA_FAILURE)]


def test_keycloak_down_with_cached_keys_still_exchanges(env: dict[str, Any]) -> None:
    assert exchange(env["client"], kc_token()).status_code == 200
    env["kc"].up = False
    assert exchange(env["client"], kc_token(jti="another")).status_code == 200


def test_keycloak_back_then_exchange_works(env: dict[str, Any]) -> None:
    env["kc"].up = False
    assert exchange(env["client"], kc_token()).status_code == 503
    env["kc"].up = True
    env["validator"].keys._attempt_at -= 60  # the rate limit on JWKS refreshes has passed
    assert exchange(env["client"], kc_token()).status_code == 200


def test_bad_token_while_keycloak_down_is_still_invalid_grant_when_keys_are_known(env: dict[str, Any]) -> None:
    assert exchange(env["client"], kc_token()).status_code == 200
    env["kc"].up = False
    good = kc_token(jti="x")
    head, body, sig = good.split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    r = exchange(env["client"], forged)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"


def test_keycloak_answering_garbage_is_503_not_500(env: dict[str, Any]) -> None:
    env["kc"].garbage = True
    r = exchange(env["client"], kc_token())
    assert r.status_code == 503 and "Retry-After" in r.headers
