"""The web-service contract of Orthanc's official authorization plugin, served by the bridge.

A site running a newer Orthanc (>= 1.11.3) with the official ``orthanc-authorization`` plugin
points ``"Authorization": {"WebServiceRootUrl": "https://<bridge>/orthanc-auth/"}`` at the bridge
and gets the same decisions as the bridge's own Orthanc plugin: the same verifier (signature,
claims, MFA, revocation), the same route table and permission vocabulary.  Only the HTTP/JSON
contract of that plugin is reused, no code.

* ``POST /orthanc-auth/user/get-profile``: the token's profile.  The official plugin knows ONE
  (permissions, labels) pair per user, the bridge's token one per role (grants, never merged), so the
  profile is the part every grant agrees on, never more (:func:`profile_of`): with an unrestricted
  grant, ``authorized-labels`` = ``["*"]`` and the permissions of the unrestricted grants; otherwise
  the permissions every label-expressible scoped grant holds, with their departments/institutions as
  labels (label your studies with them on Orthanc >= 1.12).  Whatever the profile leaves out (a
  scoped grant's extra permission) the plugin asks ``/tokens/validate`` about, resource by resource.
* ``POST /orthanc-auth/tokens/validate``: ``granted`` for one method + resource, decided by
  :func:`bridge.pacs.gate.judge`, the bridge plugin's own decision (ONE grant holding the route's
  permissions and covering the resource), see :func:`judge_official`.
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
from bridge.core.grants import Grant
from bridge.core.grants import from_claims as grants_of
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


def _verified(token: str | None) -> tuple[dict[str, Any] | None, tuple[Grant, ...], str | None]:
    """(claims, grants, None) for a valid unrevoked token, else (None, (), error-code)."""
    if token is None:
        return None, (), "invalid"
    service = _service()
    try:
        verified = service.verifier.verify(token)
    except VerificationError as exc:
        return None, (), "expired" if "expired" in exc.reason else "invalid"
    if service.is_revoked(verified.claims):
        return None, (), "invalid"
    return verified.claims, verified.grants, None


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
    claims, grants, _error = _verified(_token_of(_body()))
    if claims is None:  # anonymous or bad token: a profile that may do nothing
        return jsonify({"name": "anonymous", "permissions": [], "authorized-labels": [], "validity": 10})
    held, labels = profile_of(grants)
    return jsonify({
        "name": claims.get("preferred_username") or claims["sub"],
        "user-id": claims["sub"],
        "groups": list(claims.get("roles") or []),
        "permissions": official_permissions(held),
        "authorized-labels": labels,
        "validity": _validity(claims),
    })


def _labels(grant: Grant) -> frozenset[str] | None:
    """A scoped grant's scope as official-plugin labels, or None when labels cannot say it: labels
    are one flat set (a resource needs any one of them), so only a grant restricted by departments
    alone or institutions alone reads the same (both keys must hold together; studies/patients are
    no labels)."""
    keys = grant.scope()
    if len(keys) != 1 or not ({"departments", "institutions"} & keys.keys()):
        return None
    return frozenset(next(iter(keys.values())))


def profile_of(grants: tuple[Grant, ...]) -> tuple[list[str], list[str]]:
    """(bridge permissions, authorized labels) of the one profile the official plugin can hold,
    never wider than any single grant: the plugin applies the profile's permissions to every
    resource carrying one of its labels, and to every list and system route when the labels are
    ``*``.

    * an unrestricted grant: ``*`` and the union of the unrestricted grants' permissions (each of
      them allows its permissions everywhere);
    * none: the permissions EVERY label-expressible scoped grant holds (so any label's grant holds
      them), with the union of their labels; ``admin`` (server-wide routes) and ``upload`` (checked on
      the content only by the bridge's plugin) left out.  No such grant: no permission, no label.
    The rest is answered per resource by ``/tokens/validate``, grant by grant.
    """
    everywhere = [g for g in grants if g.unrestricted]
    if everywhere:
        return sorted(set().union(*(g.permissions for g in everywhere))), ["*"]
    labelled = [(g, labels) for g in grants if (labels := _labels(g)) is not None]
    if not labelled:
        return [], []
    common = frozenset.intersection(*(g.permissions for g, _ in labelled)) - SERVER_WIDE - NO_CONTENT_CHECK
    if not common:
        return [], []
    return sorted(common), sorted(set().union(*(labels for _, labels in labelled)))


@bp.post("/tokens/validate")
@limit("introspect")
def validate() -> Any:
    if not _authenticated():
        return _unauthorized()
    body = _body()
    claims, grants, error = _verified(_token_of(body))
    method = str(body.get("method", "")).upper()
    if claims is None:
        granted, reason, permission = False, f"token {error}", None
    else:
        verdict = judge_official(claims, method, body, grants)
        granted, reason, permission = verdict.allow, verdict.reason, verdict.permission
    if not granted:
        _service().audit(AuditEventType.ACCESS_DENIED, {
            "via": "orthanc-authorization", "server_id": body.get("server-id"), "method": method,
            "level": body.get("level"), "orthanc_id": body.get("orthanc-id"), "uri": body.get("uri"),
            "permission": permission, "reason": reason,
            "subject": (claims or {}).get("sub"), "jti": (claims or {}).get("jti"),
        })
    return jsonify({"granted": granted, "validity": _validity(claims) if claims and granted else 0})


def judge_official(claims: Mapping[str, Any], method: str, body: Mapping[str, Any],
                   grants: tuple[Grant, ...] | None = None) -> Verdict:
    """One validate body -> :func:`bridge.pacs.gate.judge`, the bridge plugin's own decision.

    * ``level: system``: the plugin sends the request's ``uri`` (no query string): judged as is.
      Without an unrestricted grant, lists and queries are refused, as by the bridge plugin; a query
      naming one study is refused too, since the query never reaches this service.
    * resource levels: the plugin sends only ``orthanc-id``/``dicom-uid``, not which sub-route it
      guards (``/studies/{id}`` or ``/studies/{id}/archive``).  A ``uri`` in the body, if any, is
      judged when it names that resource; without one, the answer is "granted" only if *every*
      route under the resource for that method would be (:data:`RESOURCE_PROBES`), so the service
      is never looser than the bridge plugin.  The study's department/institution come from the
      ``labels`` Orthanc sends (>= 1.12), its StudyInstanceUID/PatientID from ``dicom-uid`` at the
      study/patient level; without labels only an unrestricted grant allows.
    ``grants``: the token's parsed grants (from the verifier's cache), parsed from ``claims`` if None.
    """
    level = body.get("level")
    uri = body.get("uri") if isinstance(body.get("uri"), str) else ""
    if level == "system":
        if not uri.startswith("/"):
            return Verdict(False, "no uri to decide on")
        path, _, query = uri.partition("?")
        return _no_content_check(judge(claims, method, path, _query(query), lambda _target: [], grants))
    orthanc_id = body.get("orthanc-id")
    if not isinstance(level, str) or level not in LEVEL_PATHS or not isinstance(orthanc_id, str) \
            or not _ORTHANC_ID.fullmatch(orthanc_id):
        return Verdict(False, "no resource to decide on")
    base = LEVEL_PATHS[level] + orthanc_id
    labels = [x for x in body.get("labels") or [] if isinstance(x, str)] if isinstance(body.get("labels"), list) \
        else []

    uid = body.get("dicom-uid") if isinstance(body.get("dicom-uid"), str) else ""
    held = grants_of(claims) if grants is None else grants

    def studies_of(target: scopes.Target) -> list[scopes.StudyInfo]:
        if target != scopes.Target(LEVEL_PATHS[level].strip("/"), orthanc_id):
            return []
        return [_labelled_study(held, labels, level, uid)] if labels else []

    if uri:
        path, _, query = uri.partition("?")
        if path != base and not path.startswith(base + "/"):
            return Verdict(False, "uri does not name the resource being validated")
        return _no_content_check(judge(claims, method, path, _query(query), studies_of, held))
    verdict: Verdict | None = None
    for suffix in RESOURCE_PROBES:
        if routes.route_for(method, base + suffix) is None:
            continue
        verdict = judge(claims, method, base + suffix, None, studies_of, held)
        if not verdict.allow:
            return Verdict(False, f"{verdict.reason} (a {method} on this resource may be {base + suffix})",
                           verdict.permission)
    return verdict or Verdict(False, f"no rule for {method} on a {level}")


#: permissions whose request body decides which studies are touched: the bridge's own plugin checks each
#: stored instance against the uploading grants (its received-instance callback); behind the official
#: plugin nothing does, so only an unrestricted grant gives them there (profile and validate alike)
NO_CONTENT_CHECK = frozenset({"upload"})
#: bridge permissions whose routes reach every study (job archives, the job list, Lua): the bridge plugin
#: grants them to a scoped grant only below a resource in its scope (:data:`bridge.pacs.gate.SCOPE_FREE`),
#: and the official plugin applies a profile's permissions to system routes without any resource, so a
#: profile made of scoped grants leaves them out
SERVER_WIDE = frozenset({Permission.ADMIN.value})


def _no_content_check(verdict: Verdict) -> Verdict:
    if verdict.allow and verdict.permission in NO_CONTENT_CHECK and verdict.grant is not None \
            and not verdict.grant.unrestricted:
        return Verdict(False, f"scoped grant ({verdict.grant.describe()}): {verdict.permission} is checked on "
                              "the content only by the bridge's own Orthanc plugin", verdict.permission)
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


def _labelled_study(grants: tuple[Grant, ...], labels: list[str], level: str, uid: str) -> scopes.StudyInfo:
    """The resource's department/institution as far as its labels tell (labels are a flat set: a label
    counts as the department if it is one of the grants' departments, likewise for institutions; two
    such labels are ambiguous and count as none), and its StudyInstanceUID / PatientID from the
    ``dicom-uid`` the plugin sends at the study / patient level."""
    def one(names: set[str]) -> str:
        found = {x for x in labels if x in names}
        return next(iter(found)) if len(found) == 1 else ""

    departments = {d for g in grants for d in (g.departments or ())}
    institutions = {i for g in grants for i in (g.institutions or ())}
    return scopes.StudyInfo(orthanc_id="", study_uid=uid if level == "study" else "",
                            patient_id=uid if level == "patient" else "", department=one(departments),
                            institution=one(institutions))


@bp.post("/tokens/decode")
@limit("introspect")
def decode() -> Any:
    if not _authenticated():
        return _unauthorized()
    claims, _grants, error = _verified(_token_of(_body()))
    return jsonify({
        "token-type": "pacs-bridge-access-token" if claims else None,
        "error-code": error,
        "redirect-url": None,
        "resources": [],
    })
