"""Helpers of the gateway unit tests: an app with a Keycloak double (local RSA key), an Orthanc
double behind an httpx transport (records what reached it; streams both ways), sessions made as a
login would make them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from bridge.config import load_config
from bridge.core.audit_codes import AuditEventType
from bridge.store.db import engine, migrate, session
from bridge.store.models import RoleAssignment
from bridge.tokens.keys import KeyEncryptor
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator
from bridge.web import login
from bridge.web.app import create_app
from bridge.web.gateway import views
from bridge.web.gateway.sessions import Tokens
from bridge.web.tokens import build_service

KC_URL = "https://kc.test"
KC_ISS = KC_URL + "/realms/hospital"
BASE = "https://bridge.test"
ORTHANC = "http://orthanc.test:8042"
PREFIX = "/pacs"
VIEWER_ORIGIN = "https://viewer.test"

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KC_JWK = {**jwt.get_algorithm_by_name("RS256").to_jwk(_KEY.public_key(), as_dict=True),
          "kid": "kc1", "alg": "RS256", "use": "sig"}


def kc_token(**over: Any) -> str:
    """A Keycloak access token of an MFA login (signed by the double's key)."""
    now = int(time.time())
    claims = {"iss": KC_ISS, "aud": "pacs-bridge", "azp": "pacs-bridge", "sub": "kc-uuid-1", "typ": "Bearer",
              "iat": now, "exp": now + 300, "auth_time": now - 5, "acr": "mfa", "amr": ["pwd", "otp"],
              "sid": "kc-sid-1", "directory_id": "guid-alice", "preferred_username": "rad.alice",
              "name": "Alice Radiologist", "jti": str(uuid.uuid4())}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, _KEY, algorithm="RS256",
                      headers={"kid": "kc1"})


def logout_token(**over: Any) -> str:
    claims = {"iss": KC_ISS, "aud": "pacs-bridge", "iat": int(time.time()), "jti": str(uuid.uuid4()),
              "sub": "kc-uuid-1", "sid": "kc-sid-1",
              "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, _KEY, algorithm="RS256",
                      headers={"kid": "kc1"})


class OrthancDouble(httpx.BaseTransport):
    """Answers like Orthanc would for the paths tests use; keeps every request it got.  Never reads
    a request body unless the handler does (so streaming can be observed)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.handler: Callable[[httpx.Request], httpx.Response] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.handler is not None:
            return self.handler(request)
        body = b"".join(request.stream)  # type: ignore[union-attr]
        self.bodies.append(body)
        return httpx.Response(200, json={"path": request.url.path, "ok": True})

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


class FakeKeycloak:
    """The gateway's server-to-server Keycloak calls (refresh, end session), recorded."""

    def __init__(self) -> None:
        self.ended: list[str | None] = []
        self.refreshed = 0
        self.refuse: str | None = None
        self.claims: dict[str, Any] = {}

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        from bridge.web.gateway.keycloak import KeycloakEnded

        if self.refuse:
            raise KeycloakEnded(self.refuse)
        self.refreshed += 1
        return {"access_token": kc_token(**self.claims), "refresh_token": f"rt-{self.refreshed}",
                "id_token": "id.token.renewed"}

    def end(self, refresh_token: str | None) -> bool:
        self.ended.append(refresh_token)
        return True


class Gateway:
    """One app with the gateway, its doubles, its audit events."""

    def __init__(self, tmp_path: Path, web: dict[str, Any] | None = None, **gateway: Any):
        self.db_url = f"sqlite:///{tmp_path}/bridge.db"
        migrate(self.db_url)
        with session(engine(self.db_url)) as s:
            s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="radiologist", scopes={}))
        self.settings = load_config(
            bridge={"public_url": BASE, "session_secret": "s" * 40},
            keycloak={"url": KC_URL, "realm": "hospital", "client_secret": "kc-client-secret"},
            store={"url": self.db_url},
            tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": BASE,
                    "clients": [{"client_id": "pacs-viewer"}]},
            gateway={"orthanc_url": ORTHANC, "allow_plaintext": True, "viewer_origins": [VIEWER_ORIGIN], **gateway},
            web=web or {},
            audit={"checkpoint_key_file": str(tmp_path / "audit-checkpoint.key")},
        )
        self.events: list[tuple[AuditEventType, dict[str, Any]]] = []
        service = build_service(self.settings)
        service.keycloak = KeycloakTokenValidator(
            KeycloakSettings(KC_ISS, "pacs-bridge", frozenset({"pacs-viewer", "pacs-bridge"})),
            fetch=lambda url, body, headers: json.dumps({"keys": [KC_JWK]}).encode())
        service.audit = lambda kind, details: self.events.append((kind, dict(details)))
        self.service = service
        self.orthanc = OrthancDouble()
        self.app = create_app(self.settings, token_service=service, gateway_transport=self.orthanc,
                              config={"PACS_BRIDGE_RATE_LOGIN": "1000/minute"})
        self.oauth = self.app.extensions[login.EXTENSION]["keycloak"]
        self.oauth.server_metadata.update({
            "_loaded_at": time.time(), "issuer": KC_ISS,
            "authorization_endpoint": KC_ISS + "/protocol/openid-connect/auth",
            "token_endpoint": KC_ISS + "/protocol/openid-connect/token",
            "end_session_endpoint": KC_ISS + "/protocol/openid-connect/logout",
        })
        self.gw: views.Gateway = self.app.extensions[views.EXTENSION]
        self.keycloak = FakeKeycloak()
        self.gw.keycloak = self.keycloak  # type: ignore[assignment]
        self.client: FlaskClient = self.app.test_client()

    # ---- requests
    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, base_url=BASE, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, base_url=BASE, **kw)

    def open(self, path: str, **kw: Any) -> Any:
        return self.client.open(path, base_url=BASE, **kw)

    # ---- sessions
    def issue(self, **claims: Any) -> Any:
        from bridge.tokens import claims as claims_mod

        kc = jwt.decode(kc_token(**claims), options={"verify_signature": False})
        subject, _ = claims_mod.subject_from_keycloak(kc)
        return self.service.issue(subject, self.service.grant_for(subject, kc), views.CLIENT_ID)

    def log_in(self, *, sid: str = "kc-sid-1", lifetime: float = 3600, **claims: Any) -> str:
        """A live session as finish_login makes it; the cookie is set on the test client."""
        issued = self.issue(sid=sid, **claims)
        raw = self.gw.store.create(subject_id=issued.claims["sub"], kc_sub="kc-uuid-1", sid=sid,
                                   username="rad.alice", tokens=Tokens(issued.access_token, "rt-0", "id.token.0"),
                                   token_exp=float(issued.claims["exp"]), lifetime_seconds=lifetime)
        self.set_cookie(raw)
        return raw

    def set_cookie(self, raw: str) -> None:
        self.client.set_cookie(views.COOKIE, raw, domain="bridge.test", path="/", secure=True)

    def denied(self) -> list[str]:
        return [d.get("reason", "") for k, d in self.events if k == AuditEventType.ACCESS_DENIED]


def counting(total: int, chunk: int, produced: list[int]) -> Iterator[bytes]:
    """``total`` bytes in chunks, counting how many were produced so far into ``produced[0]``."""
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        produced[0] = sent
        yield b"x" * n
