"""The request filter's hot-path shortcuts give the same answers as the long way round."""

from __future__ import annotations

import itertools

from pacs_bridge_double import ISSUER, JWKS_URL, REVOKED_URL, FakeBridge

from bridge.core import grants, routes
from bridge.core.verifier import Verifier, VerifierConfig


def test_the_cached_grants_agree_with_a_fresh_parse(bridge: FakeBridge) -> None:
    """The verifier parses grants once per token (kept in its verified cache); the hot path's
    "any restricted grant" answer is the long way round's."""
    values: list[object] = [None, [], "", 0, ["Radiology"], [""], "Radiology", [1], {"x": 1}, True]
    shapes: list[object] = [None, "everything", [], {}]
    shapes += [{"departments": d, "institutions": i} for d, i in itertools.product(values, values)]
    shapes += [{"departments": d} for d in values] + [{"wards": ["A"]}, {"studies": ["1.2"]}]
    cfg = VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=JWKS_URL, revocation_url=REVOKED_URL)
    v = Verifier(cfg, fetch=bridge.fetch)
    for shape in shapes:
        token = bridge.token(grants=[{"kind": "role", "role": "r", "permissions": ["view"], "scope": shape}])
        first, hit = v.verify(token), v.verify(token)
        assert first.grants == hit.grants == grants.from_claims(first.claims), shape
        assert grants.any_restricted(hit.grants) == (not all(g.unrestricted for g in grants.from_claims(hit.claims)))
        fresh = grants.from_claims(hit.claims)
        assert (len(fresh) == 1 and fresh[0].unrestricted) == (shape in (None, {}) or (
            isinstance(shape, dict) and set(shape) <= {"departments", "institutions"}
            and all(v in (None, []) for v in shape.values()))), shape


def test_route_memo_same_answers_and_bounded() -> None:
    cases = [("GET", "/studies/abc"), ("GET", "/studies/abc?expand"), ("DELETE", "/studies/abc"),
             ("GET", "/studies/../tools/reset"), ("POST", "/tools/reset"), ("GET", "/nope"),
             ("get", "/studies/abc/archive")]
    for method, path in cases:
        expected = routes._match(method, path.split("?", 1)[0])
        assert routes.route_for(method, path) == expected
        assert routes.route_for(method, path) == expected  # from the memo
    for i in range(routes.MEMO_SIZE + 10):
        routes.route_for("GET", f"/instances/{i}/frames/1")
    assert len(routes._MEMO) <= routes.MEMO_SIZE


def test_background_refresh_renews_before_the_request_path_would(bridge: FakeBridge) -> None:
    cfg = VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=JWKS_URL, revocation_url=REVOKED_URL,
                         revocation_refresh_seconds=10)
    v = Verifier(cfg, fetch=bridge.fetch)
    v.refresh_revocations(1000.0)
    v.refresh_revocations(1004.0, max_age=5)  # not yet 5 s old: nothing fetched
    assert bridge.calls.count(REVOKED_URL) == 1
    v.refresh_revocations(1005.0, max_age=5)  # half the period: renewed, though not due for requests
    assert bridge.calls.count(REVOKED_URL) == 2
