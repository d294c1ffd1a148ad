"""The web-service contract of Orthanc's official authorization plugin, served by the bridge.

A site running a newer Orthanc (>= 1.11.3) with the official ``orthanc-authorization`` plugin
points ``"Authorization": {"WebServiceRootUrl": "https://<bridge>/orthanc-auth/"}`` at the bridge
and gets the same decisions as the bridge's own Orthanc plugin: the same verifier (signature,
claims, MFA, revocation), the same route table and permission vocabulary.  Only the HTTP/JSON
contract of that plugin is reused (../shared/reference/orthanc.md section 5), no code.

* ``POST /orthanc-auth/user/get-profile``: the token's profile; ``permissions`` in the official
  vocabulary, ``authorized-labels`` = ``["*"]`` for an unscoped token, else the token's
  departments and institutions (label your studies with them on Orthanc >= 1.12).
* ``POST /orthanc-auth/tokens/validate``: ``granted`` for one method + resource, decided by
  :func:`bridge.pacs.verifier.decide` over the route the plugin would call.
* ``POST /orthanc-auth/tokens/decode``: the token's type and error code (``expired``/``invalid``).

``validity`` (how long the plugin may cache an answer) never outlives the token and is capped at
60 s, so a revocation reaches the PACS within a minute.  The plugin authenticates with HTTP Basic
as a configured token client allowed to introspect (``tokens.clients[].may_introspect``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from bridge.audit.codes import AuditEventType
from bridge.config import Settings
from bridge.pacs import scopes
from bridge.pacs.verifier import VerificationError, bearer_token, decide
from bridge.policy.permissions import Permission

bp = Blueprint("orthanc_auth", __name__, url_prefix="/orthanc-auth")
EXTENSION = "pacs_bridge_orthanc_auth"
MAX_VALIDITY = 60
#: the bridge's permissions in the official plugin's vocabulary (orthanc-auth-service's names)
OFFICIAL_NAMES: dict[Permission, tuple[str, ...]] = {
    Permission.SEND: ("send",),
    Permission.ADMIN: ("settings",),
}
#: the plugin's ``level`` -> the Orthanc URI prefix of that resource
LEVEL_PATHS = {"patient": "/patients/", "study": "/studies/", "series": "/series/", "instance": "/instances/"}


def official_permissions(held: Any) -> list[str]:
    out: set[str] = set()
    for name in held if isinstance(held, list) else []:
        try:
            perm = Permission(name)
        except ValueError:
            continue
        out.update(OFFICIAL_NAMES.get(perm, (perm.value,)))
    return sorted(out)


def init_app(app: Flask, settings: Settings) -> None:
    """Register the blueprint; needs the token service (bridge.web.tokens) for its verifier."""
    app.extensions[EXTENSION] = {
        "clients": {
            c.client_id: c.client_secret.get_secret_value()
            for c in settings.tokens.clients
            if c.may_introspect and c.client_secret is not None
        }
    }
    app.register_blueprint(bp)


def _service() -> Any:
    return current_app.extensions["pacs_bridge_tokens"]["service"]


def _authenticated() -> bool:
    """HTTP Basic as an introspection-allowed client (constant-time comparison)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = current_app.extensions[EXTENSION]["clients"].get(user)
    return expected is not None and hmac.compare_digest(expected.encode(), password.encode())


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _token_of(body: Mapping[str, Any]) -> str | None:
    """The token in ``token-value``: a bare JWT, or a whole ``Bearer`` header value."""
    value = body.get("token-value")
    if not isinstance(value, str) or not value:
        return None
    if value[:7].lower() == "bearer ":
        try:
            return bearer_token(value)
        except VerificationError:
            return None
    return value


def _claims(token: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(claims, None) for a valid unrevoked token, else (None, error-code)."""
    if token is None:
        return None, "invalid"
    service = _service()
    try:
        claims = service.verifier.verify(token).claims
    except VerificationError as exc:
        return None, "expired" if "expired" in exc.reason else "invalid"
    if service.is_revoked(claims):
        return None, "invalid"
    return claims, None


def _validity(claims: Mapping[str, Any]) -> int:
    return max(0, min(MAX_VALIDITY, int(claims["exp"]) - int(time.time())))


def _unauthorized() -> Response:
    resp = jsonify({"error": "unauthorized"})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Basic realm="orthanc-auth"'
    return resp


@bp.post("/user/get-profile")
def get_profile() -> Any:
    if not _authenticated():
        return _unauthorized()
    claims, _error = _claims(_token_of(_body()))
    if claims is None:  # anonymous or bad token: a profile that may do nothing
        return jsonify({"name": "anonymous", "permissions": [], "authorized-labels": [], "validity": 10})
    departments, institutions = scopes.token_scopes(claims)
    labels = sorted(departments | institutions) if departments or institutions else ["*"]
    return jsonify({
        "name": claims.get("preferred_username") or claims["sub"],
        "user-id": claims["sub"],
        "groups": list(claims.get("roles") or []),
        "permissions": official_permissions(claims.get("permissions")),
        "authorized-labels": labels,
        "validity": _validity(claims),
    })


@bp.post("/tokens/validate")
def validate() -> Any:
    if not _authenticated():
        return _unauthorized()
    body = _body()
    claims, error = _claims(_token_of(body))
    method = str(body.get("method", "")).upper()
    level = body.get("level")
    if level == "system":
        path = str(body.get("uri") or "")
    elif level in LEVEL_PATHS and isinstance(body.get("orthanc-id"), str) and body["orthanc-id"]:
        path = LEVEL_PATHS[level] + body["orthanc-id"]
    else:
        path = ""
    if claims is None:
        reason, granted = f"token {error}", False
    elif not path:
        reason, granted = "no resource to decide on", False
    else:
        verdict = decide(claims, method, path)
        granted, reason = verdict.allow, verdict.reason
        if granted and level != "system" and scopes.is_scoped(claims):
            # the web service cannot read the study's department: only the labels Orthanc sends
            departments, institutions = scopes.token_scopes(claims)
            labels = body.get("labels") if isinstance(body.get("labels"), list) else []
            if not set(labels) & (departments | institutions):
                granted, reason = False, "scoped token: the resource carries none of its labels"
    if not granted:
        _service().audit(AuditEventType.ACCESS_DENIED, {
            "via": "orthanc-authorization", "server_id": body.get("server-id"), "method": method,
            "level": level, "orthanc_id": body.get("orthanc-id"), "reason": reason,
            "subject": (claims or {}).get("sub"), "jti": (claims or {}).get("jti"),
        })
    return jsonify({"granted": granted, "validity": _validity(claims) if claims and granted else 0})


@bp.post("/tokens/decode")
def decode() -> Any:
    if not _authenticated():
        return _unauthorized()
    claims, error = _claims(_token_of(_body()))
    return jsonify({
        "token-type": "pacs-bridge-access-token" if claims else None,
        "error-code": error,
        "redirect-url": None,
        "resources": [],
    })
