"""A role removed by the sync (real Samba AD, real Keycloak login with password + TOTP, the bridge's
token endpoints in process over the same store): the PACS token issued before the removal is
revoked (subject watermark in /revocations, honoured by the PACS verifier and introspection), the
pre-removal Keycloak token can no longer be exchanged, and the next login's token lacks the role."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import jwt
import pytest
from sqlalchemy import select
from sync_helpers import POLICY, need

from bridge.audit.store import AuditStore
from bridge.config import DirectorySection, load_config
from bridge.core.errors import VerificationError
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.directory.reader import reader_for
from bridge.policy.loader import load_policy
from bridge.store.db import engine as make_engine
from bridge.store.db import session
from bridge.store.models import RoleAssignment
from bridge.sync.factory import revoke_subject_hook
from bridge.sync.runner import SyncRunner
from bridge.sync.safety import Thresholds
from bridge.sync.targets.store import StoreTarget
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import demo_data
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
from pacs_devstack.realm import AD_REALM

pytestmark = pytest.mark.integration

ISSUER = "https://127.0.0.1:9443"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
USER = "card.jon"  # used by no other login of the integration suite (TOTP codes are single-use)


def kc_token(stack: dict[str, Any]) -> str:
    info = demo_data.user(USER)
    login = BrowserlessLogin(stack["keycloak"]["url"], AD_REALM, "pacs-viewer",
                             "https://127.0.0.1:9443/viewer/oidc/callback", ca_file=stack["ca"]["file"])
    return login.login(USER, str(info["password"]),
                       otp=fresh_totp(info["totp_secret"], f"{AD_REALM}/{USER}")).access_token


def test_role_removed_by_sync_revokes_old_tokens_and_leaves_the_next_token(
    stack: dict[str, Any], ad: DirectorySection, db_url: str,
) -> None:
    need(stack, "samba", "keycloak")
    eng = make_engine(db_url)
    runner = SyncRunner(reader_for(ad), load_policy(POLICY), [StoreTarget(eng)], eng,
                        thresholds=Thresholds(500, 10), audit=AuditStore(eng),
                        revoke_subject=revoke_subject_hook(eng, 3600))
    assert runner.run(apply=True, allow_deletes=True, full=True).status == "ok"
    with session(eng) as s:
        rows = s.scalars(select(RoleAssignment).where(RoleAssignment.username == USER)).all()
        base = {r.role for r in rows}
        assert "cardiologist" in base and "radiologist" not in base, f"the demo directory changed: {base}"
        sub = rows[0].subject_id
        # a role the directory no longer backs (the user was moved out of Radiology, say)
        s.add(RoleAssignment(subject_id=sub, username=USER, role="radiologist", managed=True,
                             source_group_dn="CN=Radiology,OU=Radiology,OU=Groups,DC=hospital,DC=test",
                             rule_id="radiology-staff", scopes={"departments": ["Radiology"]}))
    settings = load_config(
        # the checkpoint key under this test's own KEK, never the checkout's var/
        audit={"checkpoint_key_file": tempfile.mkdtemp(prefix="cp-") + "/cp.key"},
        keycloak={"url": stack["keycloak"]["url"], "realm": AD_REALM, "ca_file": stack["ca"]["file"]},
        store={"url": db_url}, sync={"policy_file": str(POLICY)},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": ISSUER,
                "clients": [{"client_id": "pacs-viewer"},
                            {"client_id": "pacs", "client_secret": "introspect-secret", "may_introspect": True}]},
    )
    client = create_app(settings).test_client()

    def exchange(subject_token: str) -> Any:
        return client.post("/token", data={"grant_type": EXCHANGE, "client_id": "pacs-viewer",
                                           "subject_token": subject_token, "subject_token_type": AT})

    before = kc_token(stack)
    r = exchange(before)
    assert r.status_code == 200, r.json
    old = r.json["access_token"]
    assert set(jwt.decode(old, options={"verify_signature": False})["roles"]) == base | {"radiologist"}
    verifier = Verifier(VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=ISSUER + "/jwks.json",
                                       revocation_url=ISSUER + "/revocations", revocation_refresh_seconds=0),
                        fetch=lambda url, data, headers: client.get(url.removeprefix(ISSUER)).data)
    verifier.verify(old)

    report = runner.run(apply=True, allow_deletes=True, full=True)  # the sync removes the role
    assert report.status == "ok" and report.counts()["store.removed"] == 1, report.counts()

    deadline = time.time() + 5  # the revocation list is cached for 2 s per worker
    while sub not in {e["sub"] for e in client.get("/revocations").json["subjects"]}:
        assert time.time() < deadline, "the sync raised no watermark for the subject"
        time.sleep(0.3)
    with pytest.raises(VerificationError, match="revoked"):
        verifier.verify(old)
    r = client.post("/introspect", data={"token": old}, auth=("pacs", "introspect-secret"))
    assert r.json == {"active": False}
    r = exchange(before)  # the Keycloak token from before the removal buys nothing any more
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"

    time.sleep(1.1)  # the next login's iat is after the watermark (whole seconds)
    r = exchange(kc_token(stack))
    assert r.status_code == 200, r.json
    claims = verifier.verify(r.json["access_token"]).claims
    assert set(claims["roles"]) == base
    assert "Radiology" not in {d for g in claims["grants"] for d in g["scope"].get("departments", [])}
