"""`make demo`'s last step: show the running stack doing its job, end to end, in a few lines.

1. `rad.alice` (Active Directory) logs in to Keycloak with her password and a TOTP code;
2. the bridge exchanges that Keycloak token for a PACS token (RFC 8693);
3. Orthanc, through the bridge's plugin, serves her a request with the token and refuses it without;
4. `ref.zoe`, who logged in with a password only, gets no PACS token (RFC 9470 step-up challenge);
5. last, where staff open the PACS in a browser (the bridge's gateway) and as whom to log in.

Nothing secret is printed: tokens are summarised by their claims, never shown.
"""

from __future__ import annotations

import sys
from typing import Any

import jwt
import requests

from bridge.http import pinned_session
from pacs_devstack import demo_data, state
from pacs_devstack.kc_login import client_for, fresh_totp

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def _exchange(http: requests.Session, bridge_url: str, token: str) -> requests.Response:
    return http.post(f"{bridge_url}/token", data={
        "grant_type": EXCHANGE, "client_id": "pacs-viewer", "subject_token": token,
        "subject_token_type": ACCESS_TOKEN}, timeout=15)


def run(out: Any = sys.stdout) -> bool:
    """Walk through the chain; True if every step behaved as it should."""
    info = state.read_stack()
    missing = [n for n in ("keycloak", "bridge", "orthanc") if n not in info]
    if missing:
        print(f"walkthrough skipped: {', '.join(missing)} not running", file=out)
        return False
    http = pinned_session(info["ca"]["file"])
    bridge_url, orthanc_url = info["bridge"]["url"], info["orthanc"]["url"]
    ok = True

    def step(good: bool, text: str) -> None:
        nonlocal ok
        ok &= good
        print(f"  [{'ok' if good else 'FAILED'}] {text}", file=out)

    print("\nWalkthrough", file=out)
    alice = demo_data.user("rad.alice")
    login = client_for(info, "hospital", "pacs-viewer").login(
        "rad.alice", alice["password"], otp=fresh_totp(alice["totp_secret"], "hospital/rad.alice"))
    kc_claims = jwt.decode(login.access_token, options={"verify_signature": False})
    step(kc_claims.get("acr") == "mfa",
         f"rad.alice logged in to Keycloak with password + TOTP: acr={kc_claims.get('acr')} "
         f"amr={kc_claims.get('amr')}")

    r = _exchange(http, bridge_url, login.access_token)
    step(r.status_code == 200, f"bridge exchanged it for a PACS token: HTTP {r.status_code}")
    if r.status_code != 200:
        return False
    pacs_token = r.json()["access_token"]
    header = jwt.get_unverified_header(pacs_token)
    claims = jwt.decode(pacs_token, options={"verify_signature": False})
    print(f"         typ={header.get('typ')} alg={header.get('alg')} sub={claims.get('sub')} "
          f"aud={claims.get('aud')} expires in {claims['exp'] - claims['iat']} s", file=out)
    print(f"         roles={claims.get('roles')} permissions={claims.get('permissions')}", file=out)

    with_token = http.get(f"{orthanc_url}/studies", headers={"Authorization": f"Bearer {pacs_token}"},
                          timeout=10)
    without = http.get(f"{orthanc_url}/studies", timeout=10)
    step(with_token.status_code == 200 and without.status_code == 403,
         f"Orthanc GET /studies: {with_token.status_code} with the token, {without.status_code} without")

    zoe = demo_data.user("ref.zoe")
    pwd_only = client_for(info, "hospital", "pacs-bridge").login("ref.zoe", zoe["password"])
    r = _exchange(http, bridge_url, pwd_only.access_token)
    challenge = r.headers.get("WWW-Authenticate", "")
    step(r.status_code == 401 and "insufficient_user_authentication" in challenge,
         f"ref.zoe (password only) gets no PACS token: HTTP {r.status_code} {challenge}")
    print(closing(info), file=out)
    return ok


def closing(info: dict[str, Any]) -> str:
    """The demo's last lines: where staff open the PACS in a browser, and as whom."""
    url = (info.get("bridge") or {}).get("gateway_url")
    if not url:
        return "\n(the browser gateway is not configured: no Orthanc in this stack)"
    return (f"\nOpen the PACS in a browser: {url}\n"
            "  log in as rad.alice (password above; TOTP: `pacs-bridge demo otp rad.alice`)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0 if run() else 1)
