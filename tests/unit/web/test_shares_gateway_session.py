"""The sharers' API with the gateway's session cookie instead of a bearer token: reads pass, a
state-changing request must come from the bridge's own origin (as for the gateway)."""

from __future__ import annotations

from pathlib import Path

from gateway_helpers import BASE, Gateway


def test_the_gateway_session_authenticates_and_cross_site_changes_are_refused(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    assert gw.get("/shares").status_code == 401  # no cookie, no token
    gw.log_in()
    r = gw.get("/shares")
    assert r.status_code == 200 and r.json == {"shares": []}
    assert gw.open("/shares/nope", method="DELETE", headers={"Origin": "https://evil.test"}).status_code == 403
    assert gw.open("/shares/nope", method="DELETE").status_code == 403  # neither Origin nor Sec-Fetch-Site
    assert gw.post("/shares", json={}, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert gw.open("/shares/nope", method="DELETE", headers={"Origin": BASE}).status_code == 404
    r = gw.post("/shares", json={"study_uid": "1.2"}, headers={"Origin": BASE})
    assert r.status_code == 400 and "recipient" in r.json["error_description"]
