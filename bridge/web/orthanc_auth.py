"""The web-service contract of Orthanc's official authorization plugin, served by the bridge.

A site running a newer Orthanc (>= 1.11.3) with the official ``orthanc-authorization`` plugin
points ``"Authorization": {"WebServiceRootUrl": "https://<bridge>/orthanc-auth/"}`` at the bridge
and gets the same decisions as the bridge's own Orthanc plugin: the same verifier (signature,
claims, MFA, revocation), the same route table and permission vocabulary.  Only the HTTP/JSON
contract of that plugin is reused, no code.

* ``POST /orthanc-auth/user/get-profile``: the token's profile; ``permissions`` in the official
  vocabulary, ``authorized-labels`` = ``["*"]`` for an unscoped token, else the token's
  departments and institutions (label your studies with them on Orthanc >= 1.12).
* ``POST /orthanc-auth/tokens/validate``: ``granted`` for one method + resource, decided by
  :func:`bridge.pacs.gate.judge`, the bridge plugin's own decision (route permission + study scope),
  see :func:`judge_official`.
* ``POST /orthanc-auth/tokens/decode``: the token's type and error code (``expired``/``invalid``).

``validity`` (how long the plugin may cache an answer) never outlives the token and is capped at
60 s, so a revocation reaches the PACS within a minute.  The plugin authenticates with HTTP Basic
as a configured token client allowed to introspect (``tokens.clients[].may_introspect``): the
same secret ``POST /introspect`` checks, so these endpoints draw on the same ``introspect`` rate
limit (a secret must not be guessable here at a rate /introspect refuses), and a refused login
is audited (``access.denied``, the client id tried, never the secret).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from bridge.config import Settings
from bridge.core import routes
from bridge.core.audit_codes import AuditEventType
from bridge.core.errors import VerificationError
from bridge.core.permissions import Permission
from bridge.core.verifier import bearer_token
from bridge.errors import www_authenticate
from bridge.pacs import scopes
from bridge.pacs.gate import Verdict, judge
from bridge.web.limits import limit

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
    """HTTP Basic as an introspection-allowed client (constant-time comparison); a refusal is
    audited with the client id that was tried."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    user: str | None = None
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = None
        else:
            expected = current_app.extensions[EXTENSION]["clients"].get(user)
            if expected is not None and hmac.compare_digest(expected.encode(), password.encode()):
                return True
    _service().audit(AuditEventType.ACCESS_DENIED, {
        "client_id": user, "via": "orthanc-authorization", "endpoint": request.path,
        "reason": "no Basic credentials of an introspection client" if user is None
        else "wrong client id or secret"})
    return False


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
    resp.headers["WWW-Authenticate"] = www_authenticate("Basic", realm="orthanc-auth")
    return resp


@bp.post("/user/get-profile")
@limit("introspect")
def get_profile() -> Any:
    if not _authenticated():
        return _unauthorized()
    claims, _error = _claims(_token_of(_body()))
    if claims is None:  # anonymous or bad token: a profile that may do nothing
        return jsonify({"name": "anonymous", "permissions": [], "authorized-labels": [], "validity": 10})
    departments, institutions = scopes.token_scopes(claims)
    scoped = bool(departments or institutions)
    labels = sorted(departments | institutions) if scoped else ["*"]
    held = claims.get("permissions")
    if scoped and isinstance(held, list):  # what the bridge plugin refuses a scoped token server-wide
        held = [p for p in held if p not in SERVER_WIDE]
    return jsonify({
        "name": claims.get("preferred_username") or claims["sub"],
        "user-id": claims["sub"],
        "groups": list(claims.get("roles") or []),
        "permissions": [p for p in official_permissions(held)
                        if not (scoped and p in NO_CONTENT_CHECK)],
        "authorized-labels": labels,
        "validity": _validity(claims),
    })


@bp.post("/tokens/validate")
@limit("introspect")
def validate() -> Any:
    if not _authenticated():
        return _unauthorized()
    body = _body()
    claims, error = _claims(_token_of(body))
    method = str(body.get("method", "")).upper()
    if claims is None:
        granted, reason, permission = False, f"token {error}", None
    else:
        verdict = judge_official(claims, method, body)
        granted, reason, permission = verdict.allow, verdict.reason, verdict.permission
    if not granted:
        _service().audit(AuditEventType.ACCESS_DENIED, {
            "via": "orthanc-authorization", "server_id": body.get("server-id"), "method": method,
            "level": body.get("level"), "orthanc_id": body.get("orthanc-id"), "uri": body.get("uri"),
            "permission": permission, "reason": reason,
            "subject": (claims or {}).get("sub"), "jti": (claims or {}).get("jti"),
        })
    return jsonify({"granted": granted, "validity": _validity(claims) if claims and granted else 0})


def judge_official(claims: Mapping[str, Any], method: str, body: Mapping[str, Any]) -> Verdict:
    """One validate body -> :func:`bridge.pacs.gate.judge`, the bridge plugin's own decision.

    * ``level: system``: the plugin sends the request's ``uri`` (no query string): judged as is.
      A scoped token is refused lists and queries, as by the bridge plugin; a query naming one
      study is refused too, since the query never reaches this service.
    * resource levels: the plugin sends only ``orthanc-id``/``dicom-uid``, not which sub-route it
      guards (``/studies/{id}`` or ``/studies/{id}/archive``).  A ``uri`` in the body, if any, is
      judged when it names that resource; without one, the answer is "granted" only if *every*
      route under the resource for that method would be (:data:`RESOURCE_PROBES`), so the service
      is never looser than the bridge plugin.  The study's department/institution come from the
      ``labels`` Orthanc sends (>= 1.12); without labels a scoped token is refused.
    """
    level = body.get("level")
    uri = body.get("uri") if isinstance(body.get("uri"), str) else ""
    if level == "system":
        if not uri.startswith("/"):
            return Verdict(False, "no uri to decide on")
        path, _, query = uri.partition("?")
        return _no_content_check(claims, judge(claims, method, path, _query(query), lambda _target: []))
    orthanc_id = body.get("orthanc-id")
    if not isinstance(level, str) or level not in LEVEL_PATHS or not isinstance(orthanc_id, str) \
            or not _ORTHANC_ID.fullmatch(orthanc_id):
        return Verdict(False, "no resource to decide on")
    base = LEVEL_PATHS[level] + orthanc_id
    labels = [x for x in body.get("labels") or [] if isinstance(x, str)] if isinstance(body.get("labels"), list) \
        else []

    def studies_of(target: scopes.Target) -> list[scopes.StudyInfo]:
        if target != scopes.Target(LEVEL_PATHS[level].strip("/"), orthanc_id):
            return []
        return [_labelled_study(claims, labels)] if labels else []

    if uri:
        path, _, query = uri.partition("?")
        if path != base and not path.startswith(base + "/"):
            return Verdict(False, "uri does not name the resource being validated")
        return _no_content_check(claims, judge(claims, method, path, _query(query), studies_of))
    verdict: Verdict | None = None
    for suffix in RESOURCE_PROBES:
        if routes.route_for(method, base + suffix) is None:
            continue
        verdict = judge(claims, method, base + suffix, None, studies_of)
        if not verdict.allow:
            return Verdict(False, f"{verdict.reason} (a {method} on this resource may be {base + suffix})",
                           verdict.permission)
    return verdict or Verdict(False, f"no rule for {method} on a {level}")


#: permissions whose request body decides which studies are touched: the bridge's own plugin checks each
#: stored instance against a scoped token (its received-instance callback); behind the official plugin
#: nothing does, so a scoped token gets none of them there (profile and validate alike)
NO_CONTENT_CHECK = frozenset({"upload"})
#: bridge permissions whose routes reach every study (job archives, the job list, Lua): the bridge plugin
#: grants them to a scoped token only below a resource in its scope (:data:`bridge.pacs.gate.SCOPE_FREE`),
#: and the official plugin applies a profile's permissions to system routes without any resource, so a
#: scoped token's profile leaves them out
SERVER_WIDE = frozenset({Permission.ADMIN.value})


def _no_content_check(claims: Mapping[str, Any], verdict: Verdict) -> Verdict:
    if verdict.allow and verdict.permission in NO_CONTENT_CHECK and scopes.is_scoped(claims):
        return Verdict(False, f"scoped token: {verdict.permission} is checked on the content only by the "
                              "bridge's own Orthanc plugin", verdict.permission)
    return verdict


#: sub-routes probed for a resource-level validate without a ``uri``: every permission a request of the
#: method on the resource may need (view and download for GET; modify, anonymize, download, admin for POST ...)
RESOURCE_PROBES = ("", "/archive", "/media", "/file", "/attachments/dicom/data", "/modify", "/anonymize",
                   "/export", "/reconstruct", "/protected", "/metadata/1024", "/preview")
#: an Orthanc resource id (SHA-1 groups joined by dashes): nothing that could add a path segment or a query
_ORTHANC_ID = re.compile(r"[0-9A-Fa-f-]{1,64}")


def _query(text: str) -> dict[str, str]:
    """A query string as Orthanc 1.10.1 hands it to a filter: split on ``&`` and the first ``=``,
    nothing percent-decoded, the last value of a repeated key."""
    out: dict[str, str] = {}
    for pair in text.split("&") if text else ():
        key, _, value = pair.partition("=")
        out[key] = value
    return out


def _labelled_study(claims: Mapping[str, Any], labels: list[str]) -> scopes.StudyInfo:
    """The resource's department/institution as far as its labels tell (labels are a flat set: a label
    counts as the department if it is one of the token's departments, likewise for institutions)."""
    departments, institutions = scopes.token_scopes(claims)
    department = next((x for x in labels if x in departments), "")
    institution = next((x for x in labels if x in institutions), "")
    return scopes.StudyInfo(orthanc_id="", study_uid="", patient_id="", department=department,
                            institution=institution)


@bp.post("/tokens/decode")
@limit("introspect")
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
