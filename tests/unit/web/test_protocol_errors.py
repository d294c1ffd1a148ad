"""OAuth error bodies and WWW-Authenticate challenges are shaped in one place (bridge/errors.py,
bridge/web/errors.py); these pin the exact bytes each endpoint sent before that, so the move
changes nothing a client sees."""

from __future__ import annotations

import json

from test_audit_api import bearer, env, mint  # noqa: F401 (fixture)

from bridge.core import mfa
from bridge.core.permissions import Permission as P


def test_audit_api_401_without_credentials(env):  # noqa: F811
    r = env["client"].get("/audit/events")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="pacs-bridge-audit"'
    assert r.headers["Cache-Control"] == "no-store" and r.mimetype == "application/json"
    assert r.data == b'{"error": "unauthorized", "error_description": ' \
                     b'"a bearer token with the audit-logs permission is required"}'


def test_audit_api_401_bad_token(env):  # noqa: F811
    r = env["client"].get("/audit/events", headers=bearer("not.a.token"))
    body = json.loads(r.data)
    assert r.status_code == 401 and body["error"] == "invalid_token"
    desc = body["error_description"].replace("\\", "\\\\").replace('"', '\\"')
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="pacs-bridge-audit", error="invalid_token", error_description="{desc}"')


def test_audit_api_403_insufficient_scope(env):  # noqa: F811
    r = env["client"].get("/audit/events", headers=bearer(mint(env["service"], {P.VIEW})))
    assert r.status_code == 403
    assert r.headers["WWW-Authenticate"] == (
        'Bearer realm="pacs-bridge-audit", error="insufficient_scope", '
        'error_description="the audit-logs permission is required", scope="audit-logs"')
    assert r.data == b'{"error": "insufficient_scope", "error_description": "the audit-logs permission is required"}'


def test_step_up_challenge_is_rfc_9470():
    from bridge.errors import www_authenticate
    from bridge.tokens.service import step_up_challenge

    rule = mfa.MfaRule(required_acr="mfa", max_auth_age_seconds=300)
    want = ('Bearer error="insufficient_user_authentication", error_description="a multi-factor login is '
            'required", acr_values="mfa", max_age="300"')
    assert step_up_challenge(rule) == want
    assert www_authenticate(error="insufficient_user_authentication",
                            error_description="a multi-factor login is required",
                            acr_values="mfa", max_age=300) == want


def test_challenge_quotes_and_escapes():
    from bridge.errors import www_authenticate

    assert www_authenticate(realm="r", error="invalid_token", error_description='bad "kid" \\ x') == \
        'Bearer realm="r", error="invalid_token", error_description="bad \\"kid\\" \\\\ x"'
    assert www_authenticate("Basic", realm="orthanc-auth") == 'Basic realm="orthanc-auth"'
    assert www_authenticate(realm="r") == 'Bearer realm="r"'


def test_the_token_service_step_up_uses_the_one_builder():
    """The exchange's 401 carries the same challenge the MFA rule describes."""
    from bridge.errors import www_authenticate
    from bridge.tokens.service import step_up_challenge

    rule = mfa.MfaRule(required_acr="gold", max_auth_age_seconds=60)
    assert step_up_challenge(rule) == ('Bearer error="insufficient_user_authentication", error_description='
                                       '"a multi-factor login is required", acr_values="gold", max_age="60"')
    assert step_up_challenge(rule) == www_authenticate(
        error=mfa.INSUFFICIENT_USER_AUTHENTICATION, error_description="a multi-factor login is required",
        acr_values="gold", max_age=60)


def test_oauth_error_response_shape():
    from flask import Flask

    from bridge.web.errors import oauth_error_response

    with Flask(__name__).app_context():
        r = oauth_error_response(503, "temporarily_unavailable", "later", retry_after=5)
        assert (r.status_code, r.data, r.headers["Retry-After"], r.headers["Cache-Control"]) == (
            503, b'{"error": "temporarily_unavailable", "error_description": "later"}', "5", "no-store")
        r = oauth_error_response(401, "invalid_token", "x", www_authenticate='Bearer error="invalid_token"')
        assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"' and r.mimetype == "application/json"
