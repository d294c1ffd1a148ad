"""The holes of the merged (permissions + scopes) token, end to end through the token service as the
composition root builds it (the real policy file, a SQLite assignment store), the claims it signs and
the PACS decision (:func:`bridge.pacs.gate.judge`).

Written against the merged model first; each of them failed there (see the report of issue 11 item 7):
the token merged every role's permissions and every role's scope into one pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.core.grants import StudyInfo
from bridge.pacs.gate import judge
from bridge.pacs.scopes import Target
from bridge.services import Services
from bridge.store.db import migrate, write_session
from bridge.store.models import RoleAssignment
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import Subject
from bridge.tokens.keys import KeyEncryptor

ROOT = Path(__file__).resolve().parents[3]
CARDIO = StudyInfo("s-card", "1.2.2", "P-2", "Cardiology", "St. Aldhelm University Hospital")
ONCO = StudyInfo("s-onco", "1.2.3", "P-3", "Oncology", "St. Aldhelm University Hospital")
ELSEWHERE = StudyInfo("s-else", "1.2.4", "P-4", "Radiology", "Clinic North")
BY_ID = {s.orthanc_id: s for s in (CARDIO, ONCO, ELSEWHERE)}


def studies_of(target: Target) -> list[StudyInfo]:
    return [BY_ID[target.key]] if target.level == "studies" and target.key in BY_ID else []


@pytest.fixture
def services(tmp_path: Path) -> Services:
    url = f"sqlite:///{tmp_path}/bridge.db"
    migrate(url)
    settings = load_config(
        store={"url": url},
        audit={"checkpoint_key_file": str(tmp_path / "checkpoint.key"), "spool_dir": str(tmp_path / "spool")},
        keycloak={"url": "https://kc.test", "realm": "hospital"},
        tokens={"key_encryption_key": KeyEncryptor.generate_secret(), "issuer": "https://127.0.0.1:9443"},
        sync={"policy_file": str(ROOT / "examples" / "policy.yaml")},
    )
    return Services(settings)


def assign(services: Services, subject: str, *rows: tuple[str, dict[str, Any]]) -> None:
    with write_session(services.engine) as s:
        for role, scopes in rows:
            s.add(RoleAssignment(subject_id=subject, username=subject, role=role, scopes=scopes,
                                 source_group_dn="cn=g", rule_id="r", managed=True))


def token_claims(services: Services, subject: Subject, kc: dict[str, Any] | None = None,
                 scope: str | None = None) -> dict[str, Any]:
    service = services.token_service
    grant = service.grant_for(subject, kc).narrowed(scope)
    return claims_mod.build(service.settings, subject, grant, "pacs-viewer")


def allowed(claims: dict[str, Any], method: str, path: str) -> bool:
    return judge(claims, method, path, None, studies_of).allow


def test_an_unscoped_role_keeps_its_reach_beside_a_scoped_one(services: Services) -> None:
    """A radiologist (everywhere) who is also a Cardiology-scoped cardiologist: merged, the scope of the
    second role restricted the first one to Cardiology."""
    assign(services, "guid-1", ("radiologist", {}), ("cardiologist", {"departments": ["Cardiology"]}))
    claims = token_claims(services, Subject(id="guid-1", username="guid-1"))
    assert allowed(claims, "GET", "/studies/s-onco")
    assert allowed(claims, "GET", "/studies/s-onco/archive")
    assert allowed(claims, "GET", "/studies/s-card")


def test_two_scoped_roles_do_not_lend_each_other_permissions(services: Services) -> None:
    """Download in Cardiology (cardiologist) and view only at St. Aldhelm (resident's institution scope
    is the other role): merged, download applied wherever either scope held."""
    assign(services, "guid-2", ("cardiologist", {"departments": ["Cardiology"]}),
           ("clinician", {"departments": ["Oncology"]}))
    claims = token_claims(services, Subject(id="guid-2", username="guid-2"))
    assert allowed(claims, "GET", "/studies/s-card/archive")
    assert allowed(claims, "GET", "/studies/s-onco")
    assert not allowed(claims, "GET", "/studies/s-onco/archive")  # merged: allowed
    assert not allowed(claims, "GET", "/studies/s-else")


def test_delete_in_one_department_is_not_delete_in_another(services: Services) -> None:
    assign(services, "guid-3", ("pacs-admin", {"departments": ["Cardiology"]}),
           ("clinician", {"departments": ["Oncology"]}))
    claims = token_claims(services, Subject(id="guid-3", username="guid-3"))
    assert allowed(claims, "DELETE", "/studies/s-card")
    assert not allowed(claims, "DELETE", "/studies/s-onco")  # merged: allowed
    assert allowed(claims, "GET", "/studies/s-onco")


def test_keycloak_role_fallback_carries_the_policy_roles_scopes(services: Services) -> None:
    """A local Keycloak account (no directory id) falls back to its realm roles; the policy scopes the
    cardiologist role to Cardiology, and the fallback issued it unscoped."""
    kc = {"sub": "kc-local-1", "preferred_username": "breakglass.card",
          "realm_access": {"roles": ["cardiologist"]}}
    claims = token_claims(services, Subject(id="kc-local-1", username="breakglass.card"), kc)
    assert claims["roles"] == ["cardiologist"]
    assert allowed(claims, "GET", "/studies/s-card")
    assert not allowed(claims, "GET", "/studies/s-onco")  # merged fallback: allowed (no scope at all)
    assert not allowed(claims, "GET", "/studies")


def test_narrowing_keeps_each_roles_scope(services: Services) -> None:
    """``scope=pacs:view``: the cardiologist role keeps view in Cardiology, the radiologist view everywhere."""
    assign(services, "guid-4", ("radiologist", {}), ("cardiologist", {"departments": ["Cardiology"]}))
    claims = token_claims(services, Subject(id="guid-4", username="guid-4"), scope="pacs:view")
    assert claims["permissions"] == ["view"]
    assert allowed(claims, "GET", "/studies/s-onco")
    assert not allowed(claims, "GET", "/studies/s-card/archive")


def test_a_role_removed_mid_session_is_gone_from_the_next_token(services: Services) -> None:
    assign(services, "guid-5", ("radiologist", {}), ("cardiologist", {"departments": ["Cardiology"]}))
    first = token_claims(services, Subject(id="guid-5", username="guid-5"))
    assert allowed(first, "GET", "/studies/s-onco")
    with write_session(services.engine) as s:
        s.query(RoleAssignment).filter_by(subject_id="guid-5", role="radiologist").delete()
    second = token_claims(services, Subject(id="guid-5", username="guid-5"))
    assert second["roles"] == ["cardiologist"]
    assert not allowed(second, "GET", "/studies/s-onco")
    assert allowed(second, "GET", "/studies/s-card")


def test_extra_grant_sources_add_their_own_grants_read_at_every_issue(services: Services) -> None:
    """Shares and break-glass add grants of their own kind through one hook; each grant allows
    only its study, never lends its permissions to a role's scope, and a withdrawn one is gone
    from the next token (read at every issue)."""
    from dataclasses import replace

    from bridge.core.grants import Grant

    live = [Grant(frozenset({"view"}), studies=frozenset({ONCO.study_uid}), kind="share")]
    service = replace(services.token_service, extra_grants=[lambda subject: list(live)])
    services.__dict__["token_service"] = service
    assign(services, "guid-9", ("cardiologist", {"departments": ["Cardiology"]}))
    claims = token_claims(services, Subject(id="guid-9", username="guid-9"))
    assert allowed(claims, "GET", "/studies/s-onco")  # the shared study
    assert not allowed(claims, "GET", "/studies/s-onco/archive")  # share: view only
    assert not allowed(claims, "GET", "/studies/s-else")
    assert allowed(claims, "GET", "/studies/s-card/archive")  # the role's own reach, unchanged
    live.clear()
    assert not allowed(token_claims(services, Subject(id="guid-9", username="guid-9")), "GET", "/studies/s-onco")
