"""The browser login plumbing through Flask's test client, with a Keycloak double (local RSA key):
the retired fragment delivery of /login, logout only by a CSRF-checked POST, and the back-channel
logout's state (ended sessions, seen logout tokens) shared by every worker.  The gateway's own
login and session rules: test_gateway_sessions.py.

Two apps over one SQLite database stand for two web server workers.  The real Keycloak round trip is
in tests/integration/oidc.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
from flask.testing import FlaskClient

from bridge.config import load_config
from bridge.core.audit_codes import AuditEventType
from bridge.oidc import session as sess
from bridge.store.db import engine, migrate, session
from bridge.store.models import RoleAssignment
from bridge.tokens.keys import KeyEncryptor
from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator
from bridge.web import login
from bridge.web.app import create_app
from bridge.web.tokens import build_service

KC_URL = "https://kc.test"
KC_ISS = KC_URL + "/realms/hospital"
BASE = "https://bridge.test"
VIEWER = BASE + "/viewer/callback"
EVENT = "http://schemas.openid.net/event/backchannel-logout"


def _kc_material() -> tuple[Any, dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**jwt.get_algorithm_by_name("RS256").to_jwk(key.public_key(), as_dict=True),
           "kid": "kc1", "alg": "RS256", "use": "sig"}
    return key, jwk


KC_KEY, KC_JWK = _kc_material()


def logout_token(**over: Any) -> str:
    claims = {"iss": KC_ISS, "aud": "pacs-bridge", "iat": int(time.time()), "jti": str(uuid.uuid4()),
              "sub": "kc-uuid-1", "sid": "kc-sid-1", "events": {EVENT: {}}}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, KC_KEY, algorithm="RS256",
                      headers={"kid": "kc1"})


class Worker:
    """One app (one 'web server worker') over the shared database, with its audit events recorded."""

    def __init__(self, settings: Any, **config: Any):
        self.events: list[tuple[AuditEventType, dict[str, Any]]] = []
        service = build_service(settings)
        service.keycloak = KeycloakTokenValidator(
            KeycloakSettings(KC_ISS, "pacs-bridge", frozenset({"pacs-viewer", "pacs-bridge"})),
            fetch=lambda url, body, headers: json.dumps({"keys": [KC_JWK]}).encode(),
        )
        service.audit = lambda kind, details: self.events.append((kind, dict(details)))
        self.service = service
        self.app = create_app(settings, token_service=service,
                              config={"PACS_BRIDGE_RATE_LOGIN": "1000/minute", **config})
        client = self.app.extensions[login.EXTENSION]["keycloak"]
        client.server_metadata.update({  # no discovery request: the endpoints Keycloak would announce
            "_loaded_at": time.time(), "issuer": KC_ISS,
            "authorization_endpoint": KC_ISS + "/protocol/openid-connect/auth",
            "end_session_endpoint": KC_ISS + "/protocol/openid-connect/logout",
        })
        self.client: FlaskClient = self.app.test_client()

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, base_url=BASE, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, base_url=BASE, **kw)

    def log_in(self, sub: str = "guid-alice", kc_sub: str = "kc-uuid-1", sid: str | None = "kc-sid-1",
               fallback: str | None = None, login_at: float | None = None) -> None:
        """Put a live MFA login into this client's session, as /oidc/callback would have."""
        now = time.time()
        values: dict[str, Any] = dict(
            sub=sub, kc_sub=kc_sub, sid=sid, username="rad.alice", name="Alice", auth_time=int(now) - 5,
            acr="mfa", amr=["pwd", "otp"], id_token="id.token.hint", login_at=login_at or now - 2,
            last_seen=now, fallback=fallback,
        )
        names = {f.name for f in dataclasses.fields(sess.Login)}
        if "realm_roles" in names:  # the session layout before roles were taken out of the cookie
            values["realm_roles"] = ["radiologist", "pacs-admin"]
        with self.client.session_transaction(base_url=BASE) as s:
            s[sess.KEY] = values

    def denied(self) -> list[str]:
        return [d.get("reason", "") for k, d in self.events if k == AuditEventType.ACCESS_DENIED]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    with session(engine(url)) as s:
        s.add(RoleAssignment(subject_id="guid-alice", username="rad.alice", role="radiologist",
                             scopes={"departments": ["Cardiology"]}))
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Any:
    return load_config(
        # the audit key and spool in the test's directory, not the default var/ of the checkout
        audit={"checkpoint_key_file": str(tmp_path / "cp.key"), "spool_dir": str(tmp_path / "spool")},
        bridge={"public_url": BASE, "session_secret": "s" * 40, "viewer_redirect_uris": [VIEWER]},
        keycloak={"url": KC_URL, "realm": "hospital", "client_secret": "kc-client-secret"},
        store={"url": db_url},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": BASE,
                "clients": [{"client_id": "pacs-viewer"}]},
    )


def delivered(r: Any) -> dict[str, Any] | None:
    """The PACS token's claims when /login delivered one to the viewer, else None."""
    loc = r.headers.get("Location", "")
    if r.status_code != 303 or not loc.startswith(VIEWER + "#"):
        return None
    token = re.search(r"access_token=([^&]+)", loc).group(1)  # type: ignore[union-attr]
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --------------------------------------------------------------------------- roles at issue time


def test_login_no_longer_delivers_a_token_it_sends_browsers_to_the_gateway(tmp_path: Path, db_url: str) -> None:
    """The URL-fragment delivery is retired (issue 11): /login never puts a PACS token in a URL;
    with a gateway it leads there, without one it is gone (failed before: 303 to the viewer with
    ``#access_token=...``)."""
    with_gateway = load_config(
        bridge={"public_url": BASE, "session_secret": "s" * 40, "viewer_redirect_uris": [VIEWER]},
        keycloak={"url": KC_URL, "realm": "hospital", "client_secret": "kc-client-secret"},
        store={"url": db_url}, gateway={"orthanc_url": "http://orthanc.test:8042", "allow_plaintext": True},
        audit={"checkpoint_key_file": str(tmp_path / "cp.key"), "spool_dir": str(tmp_path / "spool")},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": BASE,
                "clients": [{"client_id": "pacs-viewer"}]})
    w = Worker(with_gateway)
    w.log_in()  # even a live (old-style) session gets no token
    r = w.get(f"/login?redirect_uri={VIEWER}&state=x")
    assert r.status_code == 303 and r.headers["Location"] == BASE + "/pacs/"
    assert delivered(r) is None and "access_token" not in r.headers["Location"]


def test_login_without_a_gateway_is_gone(settings: Any) -> None:
    w = Worker(settings)
    w.log_in()
    r = w.get(f"/login?redirect_uri={VIEWER}")
    assert r.status_code == 410 and delivered(r) is None and "Location" not in r.headers


def test_callback_without_a_gateway_login_in_progress_is_refused(settings: Any) -> None:
    w = Worker(settings)
    with w.client.session_transaction(base_url=BASE) as s:
        s[sess.PENDING] = {"redirect_uri": VIEWER, "state": "", "stepped_up": False}  # an old-style login
    r = w.get("/oidc/callback?code=x&state=y")
    assert r.status_code == 400 and "Location" not in r.headers


# --------------------------------------------------------------------------- /logout


def test_logout_get_only_shows_a_form(settings: Any) -> None:
    w = Worker(settings)
    w.log_in()
    for method in ("GET", "HEAD"):
        r = w.client.open("/logout", method=method, base_url=BASE)
        assert r.status_code == 200, method
        assert "Location" not in r.headers
    assert w.service.revocations.subjects() == {}
    assert delivered(w.get(f"/logout?post_logout_redirect_uri={VIEWER}")) is None
    body = w.get("/logout").get_data(as_text=True)
    assert '<form method="post"' in body and 'name="csrf_token"' in body
    with w.client.session_transaction(base_url=BASE) as s:
        assert sess.KEY in s  # still logged in


def test_logout_post_needs_the_forms_csrf_token(settings: Any) -> None:
    w = Worker(settings)
    w.log_in()
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "guess"}):
        r = w.post("/logout", data=data)
        assert r.status_code == 403, data
    assert w.service.revocations.subjects() == {}
    # a token in the query string is not the form field
    token = re.search(r'name="csrf_token" value="([^"]+)"', w.get("/logout").get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    assert w.post(f"/logout?csrf_token={token}").status_code == 403
    r = w.post("/logout", data={"csrf_token": token, "post_logout_redirect_uri": VIEWER})
    assert r.status_code == 303 and r.headers["Location"].startswith(KC_ISS + "/protocol/openid-connect/logout")
    assert "post_logout_redirect_uri=" in r.headers["Location"]
    marks = w.service.revocations.subjects()
    assert "guid-alice" in marks and "kc-uuid-1" in marks  # the PACS subject and Keycloak's id
    assert w.service.ended_sessions.ended("kc-sid-1")


def test_logout_form_ignores_unregistered_post_logout_redirect(settings: Any) -> None:
    w = Worker(settings)
    w.log_in()
    body = w.get("/logout?post_logout_redirect_uri=https://evil.test/").get_data(as_text=True)
    assert "evil.test" not in body


# --------------------------------------------------------------------------- /backchannel-logout


def test_logout_token_replayed_to_another_worker_is_refused(settings: Any) -> None:
    a, b = Worker(settings), Worker(settings)
    token = logout_token()
    assert a.post("/backchannel-logout", data={"logout_token": token}).status_code == 200
    r = b.post("/backchannel-logout", data={"logout_token": token})
    assert r.status_code == 400 and "replayed" in r.get_json()["error_description"]
    assert a.post("/backchannel-logout", data={"logout_token": token}).status_code == 400


def test_backchannel_logout_is_rate_limited(settings: Any) -> None:
    w = Worker(settings, PACS_BRIDGE_RATE_BACKCHANNEL_LOGOUT="5/minute")
    codes = [w.post("/backchannel-logout", data={"logout_token": "x"}).status_code for _ in range(8)]
    assert codes[:5] == [400] * 5 and set(codes[5:]) == {429}


def test_backchannel_refusals_are_audited_in_bounded_volume(settings: Any) -> None:
    w = Worker(settings, PACS_BRIDGE_RATE_BACKCHANNEL_LOGOUT="100000/second")
    for i in range(300):
        data = {} if i % 3 == 0 else {"logout_token": "not.a.jwt" if i % 3 == 1 else logout_token(aud="other")}
        assert w.post("/backchannel-logout", data=data).status_code == 400
    refusals = [r for r in w.denied() if "back-channel logout" in r]
    assert 1 <= len(refusals) <= 20, len(refusals)
    w.app.extensions[login.EXTENSION]["backchannel_refusals"].flush()
    summary = [d for k, d in w.events if k == AuditEventType.ACCESS_DENIED and d.get("suppressed")]
    assert summary and summary[-1]["suppressed"] + len(refusals) == 300


def test_other_routes_to_logout_do_nothing(settings: Any) -> None:
    w = Worker(settings)
    w.log_in()
    token = re.search(r'name="csrf_token" value="([^"]+)"', w.get("/logout").get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    for path in ("/logout/", "/LOGOUT", "/logout%2F"):
        assert w.post(path, data={"csrf_token": token}).status_code in (404, 405), path
        assert w.get(path).status_code in (404, 405), path
    assert w.client.open("/logout", method="PUT", base_url=BASE, data={"csrf_token": token}).status_code == 405
    assert w.service.revocations.subjects() == {}
    with w.client.session_transaction(base_url=BASE) as s:
        assert sess.KEY in s  # still logged in


def test_logout_token_only_counts_in_the_form_body(settings: Any) -> None:
    w = Worker(settings)
    token = logout_token()
    r = w.post(f"/backchannel-logout?logout_token={token}")
    assert r.status_code == 400 and r.get_json()["error_description"] == "logout_token missing"
    assert w.service.revocations.subjects() == {}
    assert w.post("/backchannel-logout", data={"logout_token": token}).status_code == 200  # not spent by the query


# --------------------------------------------------------------------------- callback URL


def test_callback_url_comes_from_the_public_url_not_the_host_header(tmp_path: Path) -> None:
    """A forged Host must not choose where Keycloak sends the authorization code (failed before
    the fix: the redirect_uri followed the Host header).  The browser login is the gateway's."""
    from gateway_helpers import Gateway

    g = Gateway(tmp_path)
    for host in ("127.0.0.1:6666", "evil.test", "bridge.test:443@evil.test"):
        r = g.client.get("/pacs/", base_url=BASE, headers={"Host": host, "Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 302, r.status_code
        sent = re.search(r"redirect_uri=([^&]+)", r.headers["Location"]).group(1)  # type: ignore[union-attr]
        assert unquote(sent) == BASE.rstrip("/") + "/oidc/callback", (host, unquote(sent))
