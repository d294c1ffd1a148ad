"""The route -> permission table (issue 5 point 2) and the decision function."""

from __future__ import annotations

import pytest

from bridge.core.routes import permission_for, table
from bridge.core.verifier import decide


@pytest.mark.parametrize(
    ("method", "path", "perm"),
    [
        ("GET", "/studies", "view"),
        ("GET", "/studies/abc", "view"),
        ("GET", "/series/abc/instances", "view"),
        ("GET", "/instances/abc/preview", "view"),
        ("GET", "/instances/abc/tags?simplify", "view"),
        ("GET", "/instances/abc/frames/0/rendered", "view"),
        ("POST", "/tools/find", "view"),
        ("GET", "/dicom-web/studies?PatientID=1", "view"),
        ("GET", "/dicom-web/studies/1.2/series/3/metadata", "view"),
        ("GET", "/wado?requestType=WADO", "view"),
        ("GET", "/studies/abc/archive", "download"),
        ("POST", "/tools/create-archive", "download"),
        ("GET", "/instances/abc/file", "download"),
        ("GET", "/patients/abc/media", "download"),
        ("POST", "/instances", "upload"),
        ("POST", "/dicom-web/studies", "upload"),
        ("DELETE", "/studies/abc", "delete"),
        ("POST", "/studies/abc/modify", "modify"),
        ("POST", "/series/abc/anonymize", "anonymize"),
        ("POST", "/modalities/PACS2/store", "send"),
        ("GET", "/modalities", "send"),
        ("POST", "/peers/p/store", "send"),
        ("PUT", "/tools/log-level", "settings"),
        ("GET", "/system", "settings"),
        ("GET", "/changes", "settings"),
        ("GET", "/plugins", "admin"),
        ("GET", "/jobs/x", "admin"),
        ("POST", "/tools/execute-script", "admin"),
        ("POST", "/tools/reset", "admin"),
        ("POST", "/instances/abc/export", "admin"),
    ],
)
def test_route_permission(method: str, path: str, perm: str) -> None:
    assert permission_for(method, path) == perm


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/unknown"),
        ("GET", "/studies/../plugins"),
        ("GET", "/studies//x"),
        ("GET", "/studies/%2e%2e/plugins"),
        ("PATCH", "/studies/x"),
        ("POST", "/studies/x"),
        ("GET", "studies"),
    ],
)
def test_unknown_or_odd_routes_denied(method: str, path: str) -> None:
    assert permission_for(method, path) is None
    everything = {"grants": [{"kind": "role", "permissions": ["view", "admin"], "scope": {}}]}
    assert not decide(everything, method, path).allow


def test_table_rows_for_docs() -> None:
    assert all({"methods", "path", "permission", "what"} <= set(r) for r in table())
