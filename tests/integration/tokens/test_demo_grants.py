"""The demo hospital's grants end to end: the real directory (Samba AD) through the example policy and the
sync's store target, a real Keycloak login with password + TOTP, the token exchange, and the PACS decision
on the issued token.

* ``card.liam`` holds only the Cardiology-scoped cardiologist role: his only view is Cardiology;
* ``card.ines`` holds clinician (view everywhere) and cardiologist (view + download in Cardiology): two
  grants, never merged -- view everywhere, download in Cardiology only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.audit.store import AuditStore
from bridge.config import DirectorySection, load_config
from bridge.core.grants import StudyInfo
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.directory.reader import reader_for
from bridge.pacs.gate import judge
from bridge.pacs.scopes import Target
from bridge.policy.loader import load_policy
from bridge.store.db import engine, migrate
from bridge.sync.runner import SyncRunner
from bridge.sync.safety import Thresholds
from bridge.sync.targets.store import StoreTarget
from bridge.tokens.keys import KeyEncryptor
from bridge.web.app import create_app
from pacs_devstack import demo_data
from pacs_devstack.kc_login import BrowserlessLogin, fresh_totp
from pacs_devstack.realm import AD_REALM

pytestmark = pytest.mark.integration

POLICY = Path(__file__).parents[3] / "examples" / "policy.yaml"
ISSUER = "https://127.0.0.1:9443"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
HOSPITAL = "St. Aldhelm University Hospital"
STUDIES = {d: StudyInfo(f"s-{d}", f"1.2.{n}", f"P-{n}", d, HOSPITAL)
           for n, d in enumerate(("Cardiology", "Radiology", "Emergency", "Oncology"), start=1)}


def studies_of(target: Target) -> list[StudyInfo]:
    return [s for s in STUDIES.values() if target == Target("studies", s.orthanc_id)]


@pytest.fixture(scope="module")
def bridge(stack: dict[str, Any], kc_info: dict[str, Any], directory_sections: dict[str, DirectorySection],
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    if "samba" not in stack or AD_REALM not in directory_sections:
        pytest.skip("needs the AD realm (samba, keycloak)")
    url = f"sqlite:///{tmp_path_factory.mktemp('demo-grants')}/bridge.db"
    migrate(url)
    eng = engine(url)
    runner = SyncRunner(reader_for(directory_sections[AD_REALM]), load_policy(POLICY), [StoreTarget(eng)], eng,
                        thresholds=Thresholds(500, 10), audit=AuditStore(eng))
    assert runner.run(apply=True, full=True).status == "ok"  # the assignment rows, as the sync writes them
    settings = load_config(
        # the checkpoint key under this test's own KEK, never the checkout's var/
        audit={"checkpoint_key_file": tempfile.mkdtemp(prefix="cp-") + "/cp.key"},
        keycloak={"url": kc_info["url"], "realm": AD_REALM, "ca_file": stack["ca"]["file"]},
        store={"url": url}, sync={"policy_file": str(POLICY)},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": ISSUER,
                "clients": [{"client_id": "pacs-viewer"}]},
    )
    return create_app(settings).test_client()


def pacs_claims(bridge: Any, kc_login: Callable[[str, str], BrowserlessLogin], user: str) -> dict[str, Any]:
    info = demo_data.user(user)
    login = kc_login(AD_REALM, "pacs-viewer").login(
        user, str(info["password"]), otp=fresh_totp(info["totp_secret"], f"{AD_REALM}/{user}"))
    r = bridge.post("/token", data={"grant_type": EXCHANGE, "client_id": "pacs-viewer",
                                    "subject_token": login.access_token, "subject_token_type": AT})
    assert r.status_code == 200, r.json
    verifier = Verifier(VerifierConfig(issuer=ISSUER, audience="pacs", jwks_url=ISSUER + "/jwks.json"),
                        fetch=lambda url, data, headers: bridge.get(url.removeprefix(ISSUER)).data)
    return verifier.verify(r.json["access_token"]).claims


def allowed(claims: dict[str, Any], method: str, path: str) -> bool:
    return judge(claims, method, path, None, studies_of).allow


def test_a_cardiologist_whose_only_view_is_scoped(
    bridge: Any, kc_login: Callable[[str, str], BrowserlessLogin],
) -> None:
    claims = pacs_claims(bridge, kc_login, "card.liam")
    assert claims["roles"] == ["cardiologist"]
    assert claims["grants"] == [{"kind": "role", "role": "cardiologist", "permissions": ["download", "view"],
                                 "scope": {"departments": ["Cardiology"]}}]
    assert allowed(claims, "GET", "/studies/s-Cardiology/archive")
    for dept in ("Radiology", "Emergency", "Oncology"):
        assert not allowed(claims, "GET", f"/studies/s-{dept}"), dept
    assert not allowed(claims, "GET", "/studies")


def test_an_unscoped_and_a_scoped_role_each_keep_their_own_reach(
    bridge: Any, kc_login: Callable[[str, str], BrowserlessLogin],
) -> None:
    claims = pacs_claims(bridge, kc_login, "card.ines")
    assert claims["roles"] == ["cardiologist", "clinician"]
    assert {g["role"]: g["scope"] for g in claims["grants"]} == {
        "cardiologist": {"departments": ["Cardiology"]}, "clinician": {}}
    assert claims["permissions"] == ["download", "view"]  # the union, for display only
    assert allowed(claims, "GET", "/studies")
    for dept in STUDIES:
        assert allowed(claims, "GET", f"/studies/s-{dept}"), dept
        assert allowed(claims, "GET", f"/studies/s-{dept}/archive") is (dept == "Cardiology"), dept
