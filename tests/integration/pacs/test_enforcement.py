"""The bridge plugin on the real Orthanc: role x action matrix, scopes, token life cycle, headers.

Tokens come from the token engineer's claims builder and key ring (via the bridge double); the
plugin fetches keys and revocations over TLS from the double, as in production.
"""

from __future__ import annotations

import itertools
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.core.permissions import Permission as P
from bridge.core.permissions import expand
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from pacs_devstack.orthanc import connection
from pacs_devstack.pacs_double import BridgeDouble, dicom_instance

pytestmark = pytest.mark.integration

ROLES: dict[str, frozenset[P]] = {
    **{r: expand(set(p)) for r, p in DEFAULT_ROLE_PERMISSIONS.items()},
    "no-role": frozenset(),
}
ACTIONS = ("view", "download", "upload", "delete", "modify", "send", "settings")
_uid = itertools.count(1)


def _new_instance(tag: str) -> bytes:
    n = next(_uid)
    base = f"1.2.826.0.1.3680043.10.1137.9{int(time.time())}.{n}"
    return dicom_instance(patient_id=f"T-{tag}-{n}", patient_name="Temp^Test", study_uid=base,
                          series_uid=base + ".1", sop_uid=base + ".1.1", department="Radiology")


def _upload(pacs: Any, tag: str) -> dict[str, Any]:
    token = pacs.bridge.token([P.UPLOAD])
    resp = pacs.request("POST", "/instances", token, data=_new_instance(tag))
    assert resp.status_code == 200
    return resp.json()


def _do(pacs: Any, action: str, token: str, studies: dict[str, dict[str, str]], role: str) -> int:
    s = studies["P-001"]
    if action == "view":
        return pacs.get(f"/studies/{s['study']}", token).status_code
    if action == "download":
        return pacs.get(f"/instances/{s['instance']}/file", token).status_code
    if action == "upload":
        return pacs.request("POST", "/instances", token, data=_new_instance(role)).status_code
    if action == "delete":
        victim = _upload(pacs, role)["ParentStudy"]
        return pacs.request("DELETE", f"/studies/{victim}", token).status_code
    if action == "modify":
        body = {"Replace": {"StudyDescription": "modified"}, "Force": True}
        return pacs.request("POST", f"/studies/{s['study']}/modify", token, json=body).status_code
    if action == "send":
        return pacs.get("/modalities", token).status_code
    if action == "settings":
        return pacs.get("/system", token).status_code
    raise AssertionError(action)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_role_action_matrix(pacs: Any, studies: dict[str, dict[str, str]], role: str) -> None:
    perms = ROLES[role]
    token = pacs.bridge.token(perms, roles=[] if role == "no-role" else [role])
    got = {a: _do(pacs, a, token, studies, role) for a in ACTIONS}
    want = {a: (200 if P(a) in perms else 403) for a in ACTIONS}
    # the names of the configured peers (`GET /modalities`, no hosts) are for whoever uses peers:
    # send, query/retrieve, or the admin who defines them
    want["send"] = 200 if perms & {P.SEND, P.QUERY_RETRIEVE, P.ADMIN} else 403
    assert got == want


def test_department_and_institution_scopes(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    rad = pacs.bridge.token([P.VIEW], departments=["Radiology"])
    own, other = studies["P-001"], studies["P-002"]
    assert pacs.get(f"/studies/{own['study']}", rad).status_code == 200
    assert pacs.get(f"/instances/{own['instance']}/simplified-tags", rad).status_code == 200
    assert pacs.get(f"/dicom-web/studies/{own['study_uid']}/metadata", rad).status_code == 200
    for path in (f"/studies/{other['study']}", f"/series/{other['series']}",
                 f"/instances/{other['instance']}/preview", f"/patients/{other['patient']}",
                 f"/dicom-web/studies/{other['study_uid']}/metadata"):
        assert pacs.get(path, rad).status_code == 403, path
    # lists and queries across studies are answered filtered by the plugin's callbacks (bridge.pacs.listing)
    listed = pacs.get("/studies", rad)
    assert listed.status_code == 200 and own["study"] in listed.json() and other["study"] not in listed.json()
    qido = {d["0020000D"]["Value"][0] for d in pacs.get("/dicom-web/studies", rad).json()}
    assert own["study_uid"] in qido and other["study_uid"] not in qido
    # ... unless the query names one study the token may see
    qido = f"/dicom-web/studies?StudyInstanceUID={own['study_uid']}"
    assert pacs.get(qido, rad).status_code == 200
    assert pacs.get(f"/dicom-web/studies?StudyInstanceUID={other['study_uid']}", rad).status_code == 403
    # institution scope: P-004 is Radiology but at another institution
    both = pacs.bridge.token([P.VIEW], departments=["Radiology"], institutions=["Hospital Test"])
    assert pacs.get(f"/studies/{own['study']}", both).status_code == 200
    assert pacs.get(f"/studies/{studies['P-004']['study']}", both).status_code == 403
    # an unscoped token sees everything, lists included
    everyone = pacs.bridge.token([P.VIEW])
    assert pacs.get(f"/studies/{other['study']}", everyone).status_code == 200
    assert pacs.get("/studies", everyone).status_code == 200


def test_token_expiring_mid_session(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    claims = pacs.bridge.claims([P.VIEW], lifetime=3)
    token = pacs.bridge.ring.sign(claims)
    path = f"/studies/{studies['P-001']['study']}"
    assert pacs.get(path, token).status_code == 200
    time.sleep(max(0.0, claims["exp"] + pacs.settings["leeway_seconds"] + 0.5 - time.time()))
    assert pacs.get(path, token).status_code == 403


def test_revoked_token(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    claims = pacs.bridge.claims([P.VIEW])
    token = pacs.bridge.ring.sign(claims)
    path = f"/studies/{studies['P-001']['study']}"
    assert pacs.get(path, token).status_code == 200
    pacs.bridge.revoke(claims)
    deadline = time.monotonic() + 5
    while pacs.get(path, token).status_code == 200:
        assert time.monotonic() < deadline, "revocation not enforced within 5 s"
        time.sleep(0.2)


def test_key_rotation(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    bridge: BridgeDouble = pacs.bridge
    path = f"/studies/{studies['P-001']['study']}"
    old = bridge.token([P.VIEW])
    assert pacs.get(path, old).status_code == 200
    time.sleep(pacs.settings["jwks_min_refresh_seconds"] + 0.2)  # any earlier refresh is out of the window
    bridge.ring.rotate()
    before = bridge.jwks_fetches
    new = bridge.token([P.VIEW])
    assert pacs.get(path, new).status_code == 200
    assert bridge.jwks_fetches == before + 1, "an unknown kid must trigger exactly one JWKS refresh"
    assert pacs.get(path, old).status_code == 200, "tokens of the old key stay valid until they expire"
    # made-up kids inside the refresh window: refused, and no further JWKS fetch
    stranger = BridgeDouble("pacs-stranger")
    stranger.ring.active()
    stranger.url = bridge.url  # same issuer claim, key unknown to the PACS
    for _ in range(5):
        assert pacs.get(path, stranger.token([P.VIEW])).status_code == 403
    assert bridge.jwks_fetches == before + 1


def _raw_get(url: str, path: str, headers: list[tuple[str, str]]) -> int:
    parts = urlsplit(url)
    conn = connection(parts.port, timeout=10)  # HTTPS, verified against the stack CA
    conn.putrequest("GET", path)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_authorization_headers_fail_closed(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    path = f"/studies/{studies['P-001']['study']}"
    token = pacs.bridge.token([P.VIEW])
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert _raw_get(pacs.url, path, [("Authorization", f"{scheme} {token}")]) == 200, scheme
    bad = [
        "", "Bearer", "Bearer ", "Bearer abc", "Bearer a.b.c", "Basic dXNlcjpwYXNz", token,
        f"Bearer {token} extra", f"Bearer {token}, Bearer {token}", f"Token {token}",
        "Bearer " + "A" * 10_000 + "." + "B" * 10_000 + ".C", f"Bearer {token[:-4]}AAAA",
        f"Bearer {token}\x01",
    ]
    for value in bad:
        # a header beyond the HTTP server's limit is refused by Orthanc itself (400) before the filter
        assert _raw_get(pacs.url, path, [("Authorization", value)]) in (400, 403), value[:40]
    assert pacs.get(path + f"?token={token}").status_code == 403  # query-string tokens are not accepted
    # duplicated headers: Orthanc 1.10.1 keeps the first one and never shows the second to a plugin
    assert _raw_get(pacs.url, path, [("Authorization", "Bearer garbage"),
                                     ("Authorization", f"Bearer {token}")]) == 403
    assert _raw_get(pacs.url, path, [("Authorization", f"Bearer {token}"),
                                     ("Authorization", "Bearer garbage")]) == 200


def test_token_without_mfa_is_refused(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    path = f"/studies/{studies['P-001']['study']}"
    assert pacs.get(path, pacs.bridge.token([P.VIEW], amr=("pwd",))).status_code == 403
    assert pacs.get(path, pacs.bridge.token([P.VIEW], amr=())).status_code == 403
    assert pacs.get(path, pacs.bridge.token([P.VIEW], amr=("pwd",), acr="mfa")).status_code == 200


def test_unknown_routes_and_methods_are_denied(pacs: Any) -> None:
    everything = pacs.bridge.token(list(P))
    assert pacs.get("/system", everything).status_code == 200
    for method, path in (("GET", "/no-such-route"), ("GET", "/tools/unknown"), ("PUT", "/system")):
        assert pacs.request(method, path, everything).status_code == 403, (method, path)
    # sent verbatim (requests would normalise the dot segments away): the filter sees the path
    # Orthanc serves (it normalises before the filter), so a viewer cannot climb to /system
    auth = [("Authorization", f"Bearer {pacs.bridge.token([P.VIEW])}")]
    for path in ("/studies/../system", "/studies/x%2F..%2Fsystem", "//system", "/studies/%2e%2e/system"):
        assert _raw_get(pacs.url, path, auth) in (400, 403, 404), path
