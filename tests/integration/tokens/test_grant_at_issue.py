"""What a PACS token grants comes from the bridge's assignment store only, read at issue time: a
directory account whose assignment rows are gone gets no token, even though its Keycloak token still
carries realm roles the policy knows (real Keycloak, AD realm, roles put there by the stack's sync)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from bridge.config import load_config
from bridge.store.db import migrate
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import demo_data
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
from pacs_devstack.realm import AD_REALM

pytestmark = pytest.mark.integration

POLICY = Path(__file__).parents[3] / "examples" / "policy.yaml"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


def test_directory_account_without_assignments_gets_no_token_despite_realm_roles(
    kc_info: dict[str, Any], stack: dict[str, Any], tmp_path: Path,
    kc_login: Callable[[str, str], BrowserlessLogin],
) -> None:
    if "samba" not in stack or "bridge" not in stack:
        pytest.skip("needs the AD realm with the stack's first sync (samba, bridge)")
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)  # an empty assignment store: nobody holds a PACS role here
    settings = load_config(
        # the checkpoint key under this test's own KEK, never the checkout's var/
        audit={"checkpoint_key_file": tempfile.mkdtemp(prefix="cp-") + "/cp.key"},
        keycloak={"url": kc_info["url"], "realm": AD_REALM, "ca_file": stack["ca"]["file"]},
        store={"url": url}, sync={"policy_file": str(POLICY)},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": "https://127.0.0.1:9443",
                "clients": [{"client_id": "pacs-viewer"}]},
    )
    client = create_app(settings).test_client()
    user = "card.kara"
    info = demo_data.user(user)
    login = kc_login(AD_REALM, "pacs-viewer").login(
        user, str(info["password"]), otp=fresh_totp(info["totp_secret"], f"{AD_REALM}/{user}"))
    kc = jwt.decode(login.access_token, options={"verify_signature": False})
    realm_roles = set((kc.get("realm_access") or {}).get("roles") or [])
    assert kc.get("directory_id"), "the realm's directory id mapper is missing"
    assert "cardiologist" in realm_roles, realm_roles  # Keycloak does hold a role the policy maps
    r = client.post("/token", data={"grant_type": EXCHANGE, "client_id": "pacs-viewer",
                                    "subject_token": login.access_token, "subject_token_type": AT})
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    assert "access_token" not in r.json
