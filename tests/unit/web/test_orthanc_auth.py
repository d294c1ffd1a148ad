"""The official Orthanc authorization plugin's web-service contract, replayed from recorded bodies
(tests/fixtures/orthanc_auth/) against the bridge's blueprint."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.core.permissions import Permission as P
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import TokenSettings
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from bridge.tokens.service import TokenService
from bridge.web.app import create_app
from tests.doubles import MemoryAssignmentSource, MemoryRevocationStore, one_grant

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "orthanc_auth"
ISSUER = "https://127.0.0.1:9443"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"orthanc:s3cret-orthanc").decode()}


@pytest.fixture
def env() -> dict[str, Any]:
    events: list[tuple[AuditEventType, dict[str, Any]]] = []
    service = TokenService(
        ring=KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret())),
        settings=TokenSettings(issuer=ISSUER, audience="pacs"),
        mfa_rule=mfa.MfaRule(),
        keycloak=None,
        assignments=MemoryAssignmentSource({}),
        revocations=MemoryRevocationStore(),
        role_permissions=DEFAULT_ROLE_PERMISSIONS,
        audit=lambda kind, details: events.append((kind, dict(details))),
    )
    settings = load_config(tokens={"clients": [
        {"client_id": "orthanc", "client_secret": "s3cret-orthanc", "may_introspect": True},
        {"client_id": "viewer", "client_secret": "s3cret-viewer"},
    ]})
    app = create_app(settings, token_service=service)
    return {"client": app.test_client(), "service": service, "events": events}


def mint(service: TokenService, perms: set[P], lifetime: int = 300, **grant: Any) -> tuple[str, dict[str, Any]]:
    now = int(time.time())
    claims = claims_mod.build(
        TokenSettings(issuer=ISSUER, audience="pacs", lifetime_seconds=lifetime),
        claims_mod.Subject(id="u-1", username="rad.alice", auth_time=now - 5, amr=("pwd", "otp")),
        one_grant(("radiologist",), perms, **grant),
        "pacs-viewer", now=now,
    )
    return service.ring.sign(claims), claims


def call(env: dict[str, Any], endpoint: str, fixture: str, token: str = "", auth: dict[str, str] = BASIC) -> Any:
    body = json.loads((FIXTURES / fixture).read_text().replace("{{token}}", token))
    return env["client"].post(f"/orthanc-auth{endpoint}", json=body, headers=auth)


def test_requires_basic_auth_of_an_introspecting_client(env: dict[str, Any]) -> None:
    token, _ = mint(env["service"], {P.VIEW})
    assert call(env, "/user/get-profile", "get-profile.json", token, auth={}).status_code == 401
    viewer = {"Authorization": "Basic " + base64.b64encode(b"viewer:s3cret-viewer").decode()}
    assert call(env, "/user/get-profile", "get-profile.json", token, auth=viewer).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"orthanc:nope").decode()}
    assert call(env, "/tokens/validate", "validate-system.json", token, auth=wrong).status_code == 401


def test_get_profile(env: dict[str, Any]) -> None:
    token, _ = mint(env["service"], {P.VIEW, P.DOWNLOAD, P.SEND})
    body = call(env, "/user/get-profile", "get-profile.json", token).json
    assert body["name"] == "rad.alice" and body["user-id"] == "u-1" and body["groups"] == ["radiologist"]
    assert body["permissions"] == ["download", "send", "view"]  # send no longer carries query/retrieve
    token, _ = mint(env["service"], {P.VIEW, P.QUERY_RETRIEVE})
    body = call(env, "/user/get-profile", "get-profile.json", token).json
    assert body["permissions"] == ["q-r-remote-modalities", "view"]
    assert body["authorized-labels"] == ["*"]
    assert 0 < body["validity"] <= 60


def test_get_profile_scoped_token_lists_its_labels(env: dict[str, Any]) -> None:
    token, _ = mint(env["service"], {P.VIEW}, departments=("Radiology", "Hospital Test"))
    body = call(env, "/user/get-profile", "get-profile.json", token).json
    assert body["authorized-labels"] == ["Hospital Test", "Radiology"] and body["permissions"] == ["view"]


def test_a_scope_labels_cannot_say_gets_no_profile_permission(env: dict[str, Any]) -> None:
    """Labels are one flat set (any one of them admits a resource); a grant restricted by department AND
    institution would read as department OR institution there, so its permissions stay out of the profile."""
    token, _ = mint(env["service"], {P.VIEW}, departments=("Radiology",), institutions=("Hospital Test",))
    body = call(env, "/user/get-profile", "get-profile.json", token).json
    assert body["authorized-labels"] == [] and body["permissions"] == []


def mint_grants(service: TokenService, *grants: tuple[str, list[str], dict[str, list[str]]]) -> str:
    now = int(time.time())
    items = [{"kind": "role", "role": r, "permissions": perms, "scope": scope} for r, perms, scope in grants]
    body = claims_mod.build(
        TokenSettings(issuer=ISSUER, audience="pacs"),
        claims_mod.Subject(id="u-2", username="card.ines", auth_time=now - 5, amr=("pwd", "otp")),
        one_grant(("clinician",), ("view",)), "pacs-viewer", now=now)
    body["grants"] = items
    return service.ring.sign(body)


def test_profile_is_never_wider_than_one_grant(env: dict[str, Any]) -> None:
    """Per grant, never merged: the profile holds what every grant agrees on; the rest goes to validate."""
    service = env["service"]
    everywhere = mint_grants(service, ("clinician", ["view"], {}),
                             ("cardiologist", ["view", "download"], {"departments": ["Cardiology"]}))
    body = call(env, "/user/get-profile", "get-profile.json", everywhere).json
    assert body["authorized-labels"] == ["*"] and body["permissions"] == ["view"]  # download only per resource
    two = mint_grants(service, ("cardiologist", ["view", "download", "delete"], {"departments": ["Cardiology"]}),
                      ("onco-viewer", ["view"], {"departments": ["Oncology"]}))
    body = call(env, "/user/get-profile", "get-profile.json", two).json
    assert body["authorized-labels"] == ["Cardiology", "Oncology"] and body["permissions"] == ["view"]


def test_validate_is_per_grant(env: dict[str, Any]) -> None:
    """Two scoped grants never lend each other permissions on the official plugin's path either."""
    service = env["service"]
    body = json.loads((FIXTURES / "validate-study-labels.json").read_text())
    labels = body["labels"]
    lend = mint_grants(service, ("cardiologist", ["view", "download"], {"departments": ["Elsewhere"]}),
                       ("viewer", ["view"], {"departments": labels}))
    study = f"/studies/{body['orthanc-id']}"
    for method, uri, granted in (("GET", study, True), ("GET", study + "/archive", False), ("DELETE", study, False),
                                 ("GET", None, False)):  # no uri: every GET below it (archive too) must be
        body.update({"token-value": lend, "method": method, "uri": uri})
        answer = env["client"].post("/orthanc-auth/tokens/validate", json=body, headers=BASIC).json
        assert answer["granted"] is granted, (method, uri)


def test_get_profile_anonymous_and_invalid(env: dict[str, Any]) -> None:
    for fixture, token in (("get-profile-anonymous.json", ""), ("get-profile.json", "not.a.token")):
        body = call(env, "/user/get-profile", fixture, token).json
        assert body["permissions"] == [] and body["authorized-labels"] == [] and "name" in body
        assert isinstance(body["validity"], int)


def test_validate(env: dict[str, Any]) -> None:
    viewer, _ = mint(env["service"], {P.VIEW, P.DOWNLOAD})
    admin, _ = mint(env["service"], {P.VIEW, P.DELETE, P.MODIFY, P.SETTINGS})  # DELETE may also be metadata
    assert call(env, "/tokens/validate", "validate-study-get.json", viewer).json["granted"] is True
    denied = call(env, "/tokens/validate", "validate-study-delete.json", viewer).json
    assert denied == {"granted": False, "validity": 0}
    assert call(env, "/tokens/validate", "validate-study-delete.json", admin).json["granted"] is True
    assert call(env, "/tokens/validate", "validate-system.json", viewer).json["granted"] is False
    ok = call(env, "/tokens/validate", "validate-system.json", admin).json
    assert ok["granted"] is True and 0 < ok["validity"] <= 60
    assert any(kind == AuditEventType.ACCESS_DENIED for kind, _ in env["events"])


def test_validate_scoped_token_needs_a_matching_label(env: dict[str, Any]) -> None:
    token, _ = mint(env["service"], {P.VIEW, P.DOWNLOAD}, departments=("Radiology",))
    assert call(env, "/tokens/validate", "validate-study-get.json", token).json["granted"] is False
    assert call(env, "/tokens/validate", "validate-study-labels.json", token).json["granted"] is True
    # a label naming one of the token's institutions is not its department
    both, _ = mint(env["service"], {P.VIEW, P.DOWNLOAD}, departments=("Cardiology",), institutions=("Radiology",))
    assert call(env, "/tokens/validate", "validate-study-labels.json", both).json["granted"] is False


def validate(env: dict[str, Any], token: str, **body: Any) -> bool:
    body = {"token-key": "authorization", "token-value": f"Bearer {token}", "server-id": "s", **body}
    return env["client"].post("/orthanc-auth/tokens/validate", json=body, headers=BASIC).json["granted"]


STUDY = "6e2c0ec2-5d99c8ca-c1c21cee-79a09605-68391d12"


def test_resource_level_is_never_looser_than_the_plugin(env: dict[str, Any]) -> None:
    """The plugin sends only the resource, not the sub-route: granted only if every route under it for
    that method would be (so /studies/{id}/archive is never judged as a view)."""
    viewer, _ = mint(env["service"], {P.VIEW})
    downloader, _ = mint(env["service"], {P.VIEW, P.DOWNLOAD})
    study = {"method": "get", "level": "study", "orthanc-id": STUDY, "dicom-uid": "1.2"}
    assert validate(env, viewer, **study) is False
    assert validate(env, downloader, **study) is True
    # with the real URI (when the caller has it) the answer is exact
    assert validate(env, viewer, **study, uri=f"/studies/{STUDY}") is True
    assert validate(env, viewer, **study, uri=f"/studies/{STUDY}/archive") is False
    assert validate(env, downloader, **study, uri=f"/studies/{STUDY}/archive") is True
    # ... and must name the resource being validated
    assert validate(env, downloader, **study, uri="/studies/0000-other/archive") is False
    assert validate(env, downloader, **study, uri=f"/studies/{STUDY}x") is False
    for bad_id in ("", "../system", f"{STUDY}/archive", f"{STUDY}?x=1", None, 7):
        assert validate(env, downloader, **{**study, "orthanc-id": bad_id}) is False, bad_id
    modifier, _ = mint(env["service"], {P.VIEW, P.MODIFY})
    assert validate(env, modifier, **{"method": "post", "level": "study", "orthanc-id": STUDY}) is False


def test_system_level_scoped_token_gets_the_plugins_answer(env: dict[str, Any]) -> None:
    scoped, _ = mint(env["service"], {P.VIEW, P.UPLOAD, P.SETTINGS}, departments=("Radiology",))
    unscoped, _ = mint(env["service"], {P.VIEW})
    for uri in ("/studies", "/patients", "/dicom-web/studies", "/dicom-web/series", "/tools/find",
                "/dicom-web/studies?StudyInstanceUID=1.2&0020000D=1.3", "/dicom-web/studies?StudyInstanceUID=1.2"):
        method = "post" if uri == "/tools/find" else "get"
        assert validate(env, scoped, method=method, level="system", uri=uri) is False, uri
        assert validate(env, unscoped, method=method, level="system", uri=uri) is True, uri
    # settings need no study: the same answer as the plugin
    assert validate(env, scoped, method="get", level="system", uri="/system") is True
    # an upload's studies are in its body: only the bridge's own plugin checks them (on each instance),
    # so behind the official plugin a scoped token may not upload at all (fail closed)
    assert validate(env, scoped, method="post", level="system", uri="/instances") is False
    assert validate(env, scoped, method="post", level="system", uri="/dicom-web/studies") is False
    assert validate(env, unscoped_uploader(env), method="post", level="system", uri="/instances") is True


def unscoped_uploader(env: dict[str, Any]) -> str:
    return mint(env["service"], {P.UPLOAD})[0]


def test_scoped_profile_has_no_upload(env: dict[str, Any]) -> None:
    scoped, _ = mint(env["service"], {P.VIEW, P.UPLOAD}, departments=("Radiology",))
    assert call(env, "/user/get-profile", "get-profile.json", scoped).json["permissions"] == ["view"]
    plain = call(env, "/user/get-profile", "get-profile.json", unscoped_uploader(env)).json
    assert plain["permissions"] == ["upload"]
    assert validate(env, scoped, method="get", level="system", uri="") is False


def test_validate_revoked_and_no_mfa(env: dict[str, Any]) -> None:
    token, claims = mint(env["service"], {P.VIEW})
    env["service"].revocations.revoke(claims["jti"], claims["exp"])
    assert call(env, "/tokens/validate", "validate-study-get.json", token).json["granted"] is False
    now = int(time.time())
    weak = claims_mod.build(
        TokenSettings(issuer=ISSUER, audience="pacs"),
        claims_mod.Subject(id="u-2", auth_time=now, amr=("pwd",)),
        one_grant((), {P.VIEW}), "pacs-viewer", now=now)
    weak_token = env["service"].ring.sign(weak)
    assert call(env, "/tokens/validate", "validate-study-get.json", weak_token).json["granted"] is False


def test_decode(env: dict[str, Any]) -> None:
    token, _ = mint(env["service"], {P.VIEW})
    assert call(env, "/tokens/decode", "decode.json", token).json == {
        "token-type": "pacs-bridge-access-token", "error-code": None, "redirect-url": None, "resources": []}
    assert call(env, "/tokens/decode", "decode.json", "garbage").json["error-code"] == "invalid"
    now = int(time.time()) - 1000
    old = claims_mod.build(
        TokenSettings(issuer=ISSUER, audience="pacs", lifetime_seconds=60),
        claims_mod.Subject(id="u-3", auth_time=now, amr=("otp",)),
        one_grant((), {P.VIEW}), "pacs-viewer", now=now)
    assert call(env, "/tokens/decode", "decode.json", env["service"].ring.sign(old)).json["error-code"] == "expired"


def test_odd_validate_bodies_fail_closed(env: dict[str, Any]) -> None:
    """Adversarial bodies: a patient reached through its study, a scoped admin's server-wide routes, dot
    segments behind the resource, and fields of the wrong JSON type (never a 500, never granted)."""
    scoped, _ = mint(env["service"], {P.VIEW, P.DOWNLOAD, P.ADMIN}, departments=("Radiology",))
    labelled = {"method": "get", "level": "study", "orthanc-id": STUDY, "labels": ["Radiology"]}
    assert validate(env, scoped, **labelled, uri=f"/studies/{STUDY}") is True
    for uri in (f"/studies/{STUDY}/patient", f"/studies/{STUDY}/../../jobs/j/archive",
                f"/studies/{STUDY}/%2e%2e/x", f"/studies/{STUDY}//patient"):
        assert validate(env, scoped, **labelled, uri=uri) is False, uri
    for uri in ("/jobs/j/archive", "/jobs", "/tools/execute-script", f"/studies/{STUDY}/patient"):
        method = "post" if uri.startswith("/tools") else "get"
        assert validate(env, scoped, method=method, level="system", uri=uri) is False, uri
    for odd in ({"level": ["study"]}, {"level": {"study": 1}}, {"method": ["get"]}, {"labels": "Radiology"},
                {"orthanc-id": [STUDY]}, {"labels": [["Radiology"]]}):
        resp = env["client"].post("/orthanc-auth/tokens/validate", headers=BASIC, json={
            "token-key": "authorization", "token-value": f"Bearer {scoped}", **labelled, **odd})
        assert resp.status_code == 200 and resp.json["granted"] is False, odd


def test_scoped_profile_has_no_server_wide_admin(env: dict[str, Any]) -> None:
    """The bridge plugin refuses a scoped token the server-wide admin routes (job archives, Lua); the profile
    the official plugin applies to system routes must not hand them out either."""
    scoped, _ = mint(env["service"], {P.VIEW, P.ADMIN}, departments=("Radiology",))
    assert call(env, "/user/get-profile", "get-profile.json", scoped).json["permissions"] == ["view"]
    unscoped, _ = mint(env["service"], {P.VIEW, P.ADMIN})
    assert call(env, "/user/get-profile", "get-profile.json", unscoped).json["permissions"] == ["settings", "view"]
