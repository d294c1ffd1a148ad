"""The token endpoints through Flask's test client, with a Keycloak double (a local RSA key).

The real Keycloak is exercised in tests/integration/tokens; here every branch of the exchange,
introspection and revocation logic runs in milliseconds.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import load_config
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.tokens.claims import TokenSettings
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator, TokenService
from bridge.tokens.store import Assignment
from bridge.web.app import create_app
from tests.doubles import EndedSessions, MemoryAssignmentSource, MemoryRevocationStore

KC_ISS = "https://kc.test/realms/hospital"
ISSUER = "https://127.0.0.1:9443"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
KC_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KC_JWK = {
    **jwt.get_algorithm_by_name("RS256").to_jwk(KC_KEY.public_key(), as_dict=True),
    "kid": "kc1",
    "alg": "RS256",
    "use": "sig",
}


def kc_token(**over: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": KC_ISS,
        "aud": ["pacs-bridge", "account"],
        "azp": "pacs-viewer",
        "sub": "kc-uuid-1",
        "typ": "Bearer",
        "exp": now + 300,
        "iat": now,
        "auth_time": now - 10,
        "acr": "mfa",
        "amr": ["pwd", "otp"],
        "preferred_username": "rad.alice",
        "name": "Alice Rad",
        "directory_id": "guid-alice",
        "realm_access": {"roles": ["radiologist"]},
    }
    claims.update(over)
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, KC_KEY, algorithm="RS256", headers={"kid": "kc1"}
    )


@pytest.fixture
def env() -> dict[str, Any]:
    events: list[tuple[AuditEventType, dict]] = []
    service = TokenService(
        ring=KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret())),
        settings=TokenSettings(issuer=ISSUER, audience="pacs"),
        mfa_rule=mfa.MfaRule(),
        keycloak=KeycloakTokenValidator(
            KeycloakSettings(KC_ISS, "pacs-bridge", frozenset({"pacs-viewer"})),
            fetch=lambda url, body, headers: json.dumps({"keys": [KC_JWK]}).encode(),
        ),
        assignments=MemoryAssignmentSource({
            "guid-tom": [Assignment("technologist", {"departments": ["CT"]})],
            "guid-alice": [Assignment("radiologist", {"departments": ["Radiology"]})],
        }),
        revocations=MemoryRevocationStore(),
        role_permissions=DEFAULT_ROLE_PERMISSIONS,
        audit=lambda kind, details: events.append((kind, dict(details))),
    )
    settings = load_config(
        tokens={
            "clients": [
                {"client_id": "pacs-viewer"},
                {"client_id": "orthanc", "client_secret": "s3cret-orthanc", "may_introspect": True},
                {"client_id": "ops", "client_secret": "s3cret-ops", "may_revoke_any": True},
            ]
        }
    )
    app = create_app(settings, token_service=service, config={"PACS_BRIDGE_RATE_TOKEN": "1000/second"})
    return {"client": app.test_client(), "service": service, "events": events}


def basic(cid: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()}


def exchange(client: Any, subject_token: str, **extra: str) -> Any:
    return client.post(
        "/token",
        data={
            "grant_type": EXCHANGE,
            "client_id": "pacs-viewer",
            "subject_token": subject_token,
            "subject_token_type": AT,
            **extra,
        },
    )


def pacs_verifier(env: dict[str, Any]) -> Verifier:
    c = env["client"]
    return Verifier(
        VerifierConfig(
            issuer=ISSUER,
            audience="pacs",
            jwks_url=ISSUER + "/jwks.json",
            revocation_url=ISSUER + "/revocations",
            revocation_refresh_seconds=0,
        ),
        fetch=lambda url, body, headers: c.get(url.removeprefix(ISSUER)).data,
    )


def test_exchange_mfa_token_gives_pacs_token(env: dict[str, Any]) -> None:
    r = exchange(env["client"], kc_token())
    assert r.status_code == 200, r.json
    body = r.json
    assert body["issued_token_type"] == AT and body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert r.headers["Cache-Control"] == "no-store"
    claims = pacs_verifier(env).verify(body["access_token"]).claims
    assert claims["sub"] == "guid-alice" and claims["client_id"] == "pacs-viewer"
    assert claims["roles"] == ["radiologist"] and "download" in claims["permissions"]
    assert claims["acr"] == "mfa" and claims["amr"] == ["pwd", "otp"]
    assert env["events"][-1][0] == AuditEventType.TOKEN_EXCHANGED


def test_assignments_win_over_keycloak_roles_and_carry_scopes(env: dict[str, Any]) -> None:
    r = exchange(env["client"], kc_token(directory_id="guid-tom", preferred_username="tech.tom"))
    claims = jwt.decode(r.json["access_token"], options={"verify_signature": False})
    assert claims["roles"] == ["technologist"] and [g["scope"] for g in claims["grants"]] == [{"departments": ["CT"]}]
    assert "upload" in claims["permissions"]


def test_exchange_without_mfa_is_401_step_up(env: dict[str, Any]) -> None:
    r = exchange(env["client"], kc_token(acr="1", amr=["pwd"]))
    assert r.status_code == 401
    assert r.json["error"] == "insufficient_user_authentication"
    www = r.headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in www and 'acr_values="mfa"' in www
    assert env["events"][-1][0] == AuditEventType.MFA_FAILURE


@pytest.mark.parametrize(
    "over",
    [
        {"iss": "https://evil/realms/hospital"},
        {"aud": "account"},
        {"azp": "some-other-app"},
        {"exp": int(time.time()) - 100},
        {"typ": "ID"},
        {"directory_id": "guid-nobody"},  # a directory account without assignments
    ],
)
def test_bad_subject_tokens_and_unknown_users_look_alike(env: dict[str, Any], over: dict) -> None:
    r = exchange(env["client"], kc_token(**over))
    assert r.status_code == 400
    assert r.json == {"error": "invalid_grant", "error_description": "subject token is not acceptable"}


def test_garbage_subject_token_and_bad_params(env: dict[str, Any]) -> None:
    assert exchange(env["client"], "garbage").json["error"] == "invalid_grant"
    assert exchange(env["client"], kc_token(), subject_token_type="urn:x").json["error"] == "invalid_request"
    assert exchange(env["client"], kc_token(), audience="other").json["error"] == "invalid_target"
    r = env["client"].post(
        "/token",
        data={"grant_type": EXCHANGE, "client_id": "nobody", "subject_token": kc_token(), "subject_token_type": AT},
    )
    assert r.json["error"] == "invalid_client"


def test_scope_narrows_token(env: dict[str, Any]) -> None:
    r = exchange(env["client"], kc_token(), scope="pacs:view pacs:delete")
    assert r.json["scope"] == "pacs:view"


def test_introspection_only_for_authenticated_allowed_clients(env: dict[str, Any]) -> None:
    c = env["client"]
    tok = exchange(c, kc_token()).json["access_token"]
    assert c.post("/introspect", data={"token": tok, "client_id": "pacs-viewer"}).status_code == 401
    r = c.post("/introspect", data={"token": tok}, headers=basic("orthanc", "wrong"))
    assert r.status_code == 401
    r = c.post("/introspect", data={"token": tok}, headers=basic("ops", "s3cret-ops"))
    assert r.json == {"active": False}  # authenticated but not an introspecting client
    r = c.post("/introspect", data={"token": tok}, headers=basic("orthanc", "s3cret-orthanc"))
    assert r.json["active"] is True and r.json["sub"] == "guid-alice" and r.json["permissions"]
    r = c.post("/introspect", data={"token": "nonsense"}, headers=basic("orthanc", "s3cret-orthanc"))
    assert r.json == {"active": False}


def test_refused_client_credentials_are_audited_without_the_secret(env: dict[str, Any]) -> None:
    """Secret guessing on /introspect and /revoke shows in the trail (failed before: no record)."""
    c = env["client"]
    c.post("/introspect", data={"token": "x.y.z"}, headers=basic("orthanc", "guess-1"))
    c.post("/revoke", data={"token": "x.y.z"}, headers=basic("ops", "guess-2"))
    refused = [d for k, d in env["events"] if k == AuditEventType.ACCESS_DENIED
               and d.get("reason") == "client authentication failed"]
    assert [(d["client_id"], d["endpoint"]) for d in refused] == [("orthanc", "introspect"), ("ops", "revoke")]
    assert "guess" not in repr(refused)


def test_revocation_reaches_introspection_and_verifiers(env: dict[str, Any]) -> None:
    c = env["client"]
    tok = exchange(c, kc_token()).json["access_token"]
    v = pacs_verifier(env)
    v.verify(tok)
    # another public client cannot revoke it; the answer does not say so
    assert c.post("/revoke", data={"token": tok, "client_id": "nobody"}).json["error"] == "invalid_client"
    r = c.post("/revoke", data={"token": tok, "client_id": "pacs-viewer"})
    assert r.status_code == 200
    jti = jwt.decode(tok, options={"verify_signature": False})["jti"]
    assert jti in {e["jti"] for e in c.get("/revocations").json["revoked"]}
    r = c.post("/introspect", data={"token": tok}, headers=basic("orthanc", "s3cret-orthanc"))
    assert r.json == {"active": False}
    with pytest.raises(Exception, match="revoked"):
        v.verify(tok)
    # unknown tokens: 200, no oracle
    assert c.post("/revoke", data={"token": "x.y.z", "client_id": "pacs-viewer"}).status_code == 200


def test_revoke_any_client(env: dict[str, Any]) -> None:
    c = env["client"]
    tok = exchange(c, kc_token()).json["access_token"]
    assert c.post("/revoke", data={"token": tok}, headers=basic("orthanc", "s3cret-orthanc")).status_code == 200
    assert not env["service"].revocations.active()  # orthanc may not revoke viewer tokens
    assert c.post("/revoke", data={"token": tok}, headers=basic("ops", "s3cret-ops")).status_code == 200
    assert env["service"].revocations.active()


def test_metadata_and_jwks(env: dict[str, Any]) -> None:
    c = env["client"]
    md = c.get("/.well-known/oauth-authorization-server").json
    assert md["issuer"] == ISSUER and md["token_endpoint"] == ISSUER + "/token"
    assert EXCHANGE in md["grant_types_supported"] and "pacs:view" in md["scopes_supported"]
    keys = c.get("/jwks.json").json["keys"]
    assert keys and all("d" not in k for k in keys)


def test_rate_limit(env: dict[str, Any]) -> None:
    c = env["client"]
    codes = [c.post("/revoke", data={"token": "x", "client_id": "pacs-viewer"}).status_code for _ in range(12)]
    assert 429 in codes


def test_subject_revocation_reaches_introspection_and_verifiers(env: dict[str, Any]) -> None:
    c = env["client"]
    tok = exchange(c, kc_token()).json["access_token"]
    v = pacs_verifier(env)
    v.verify(tok)
    sub = jwt.decode(tok, options={"verify_signature": False})["sub"]
    env["service"].revoke_subject(sub, "logout")
    assert sub in {e["sub"] for e in c.get("/revocations").json["subjects"]}
    r = c.post("/introspect", data={"token": tok}, headers=basic("orthanc", "s3cret-orthanc"))
    assert r.json == {"active": False}
    v.refresh_revocations()
    with pytest.raises(Exception, match="revoked"):
        v.verify(tok)


# --------------------------------------------------------------------------- hole 4: no widening


def test_directory_account_without_assignments_gets_nothing_despite_realm_roles(env: dict[str, Any]) -> None:
    """No fallback to Keycloak realm roles (unscoped) for a directory account whose roles were removed."""
    r = exchange(env["client"], kc_token(directory_id="guid-cardio", realm_access={"roles": ["radiologist"]}))
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    kind, details = env["events"][-1]
    assert kind == AuditEventType.ACCESS_DENIED and details["subject"] == "guid-cardio"
    assert "no PACS role assignment" in details["reason"] and "realm roles are not used" in details["reason"]
    # the same holds under the other spellings of the directory id claim
    for claim in ("ldap_id", "LDAP_ID"):
        r = exchange(env["client"], kc_token(directory_id=None, **{claim: "guid-cardio"}))
        assert r.status_code == 400 and r.json["error"] == "invalid_grant", claim


def test_local_keycloak_account_still_uses_realm_roles(env: dict[str, Any]) -> None:
    """A break-glass account without a directory id keeps the realm-role fallback (and says so)."""
    r = exchange(env["client"], kc_token(directory_id=None, sub="kc-local-1", preferred_username="breakglass"))
    assert r.status_code == 200, r.json
    claims = jwt.decode(r.json["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "kc-local-1" and claims["roles"] == ["radiologist"]
    assert env["events"][-1][1]["source"] == "keycloak-roles"


def test_directory_account_is_not_matched_by_username(env: dict[str, Any]) -> None:
    """An assignment keyed by another person's username is never used for a directory account."""
    env["service"].assignments.by_subject["rad.alice"] = [Assignment("pacs-admin", {})]
    r = exchange(env["client"], kc_token(directory_id="guid-new", preferred_username="rad.alice"))
    assert r.status_code == 400


# --------------------------------------------------------------------------- hole 8: logout reaches the exchange


def test_keycloak_token_from_before_a_logout_is_not_exchanged(env: dict[str, Any]) -> None:
    before = kc_token(iat=int(time.time()) - 5)
    assert exchange(env["client"], before).status_code == 200
    env["service"].revoke_subject("guid-alice", "logout")
    r = exchange(env["client"], before)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    kind, details = env["events"][-1]
    assert kind == AuditEventType.ACCESS_DENIED and "watermark" in details["reason"]
    # the same second as the watermark counts as before it (whole seconds: err on the closed side)
    mark = env["service"].revocations.subjects()["guid-alice"][0]
    assert exchange(env["client"], kc_token(iat=mark)).status_code == 400
    # a later login is fine
    assert exchange(env["client"], kc_token(iat=mark + 1)).status_code == 200


def test_watermark_on_keycloak_id_also_blocks_the_exchange(env: dict[str, Any]) -> None:
    """Back-channel logout may only know Keycloak's user id (directory id lookup failed)."""
    before = kc_token(iat=int(time.time()) - 5)
    env["service"].revoke_subject("kc-uuid-1", "back-channel logout")
    assert exchange(env["client"], before).status_code == 400


def test_keycloak_token_of_an_ended_session_is_not_exchanged(env: dict[str, Any]) -> None:
    env["service"].ended_sessions = EndedSessions()
    env["service"].ended_sessions.end("sid-1")
    r = exchange(env["client"], kc_token(sid="sid-1"))
    assert r.status_code == 400 and "ended by logout" in env["events"][-1][1]["reason"]
    assert exchange(env["client"], kc_token(sid="SID-1")).status_code == 200  # sids are exact, opaque values
    assert exchange(env["client"], kc_token(sid="sid-2")).status_code == 200
