"""The share lifecycle through the web app (bridge/web/shares.py, bridge/web/share_page.py) over
bridge/sharing/service.py: a SQLite store, the example policy, an in-memory PACS that decides each
request on the token's grants as the plugin does (bridge/core/grants.py).  The real Orthanc and
Keycloak flows are tests/integration/sharing/."""

from __future__ import annotations

import datetime as dt
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydicom import dcmread

from bridge.audit.keys import CheckpointKey
from bridge.audit.store import AuditStore
from bridge.config import load_config
from bridge.core import grants as grants_mod
from bridge.core import mfa
from bridge.core.permissions import Permission as P
from bridge.policy.loader import load_policy
from bridge.sharing.service import ShareService
from bridge.sharing.store import ShareStore
from bridge.store import db
from bridge.store.models import RoleAssignment
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import Subject, TokenSettings
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
from bridge.tokens.roles import DEFAULT_ROLE_PERMISSIONS
from bridge.tokens.service import TokenService
from bridge.web.app import create_app
from pacs_devstack.pacs_double import dicom_instance
from tests.doubles import MemoryAssignmentSource, MemoryRevocationStore, one_grant

ISSUER = "https://127.0.0.1:9443"
POLICY = Path(__file__).resolve().parents[3] / "examples" / "policy.yaml"
CARDIOLOGY = "CN=Cardiology,OU=Clinical,OU=Groups,DC=hospital,DC=test"
HEALTH_CARE = "GDPR Art. 6(1)(e) + Art. 9(2)(h): provision of health care"
STUDY = "1.2.826.0.1.3680043.10.1137.900.1"
HIDDEN = "1.2.826.0.1.3680043.10.1137.900.2"
PARTNER = {"type": "external", "name": "Dr. Eve Second", "institution": "Northgate University Hospital",
           "email": "eve@northgate-uh.example", "country": "DE"}


class MemoryPacs:
    """Studies in memory; each call is decided on the bearer token's grants like the plugin would."""

    def __init__(self) -> None:
        self.studies: dict[str, tuple[grants_mod.StudyInfo, dict[str, bytes]]] = {}
        self.calls: list[str] = []

    def add(self, uid: str, department: str, n: int = 3, modality: str = "CT") -> None:
        files = {f"{uid}.1.{i}": dicom_instance(patient_id="MRN-4711", patient_name="Doe^Jane", study_uid=uid,
                                                 series_uid=f"{uid}.1", sop_uid=f"{uid}.1.{i}", modality=modality,
                                                 department=department, accession="ACC-1")
                 for i in range(1, n + 1)}
        self.studies[uid] = (grants_mod.StudyInfo(f"o-{uid}", uid, "MRN-4711", department, "St Aldhelm"), files)

    @staticmethod
    def _grants(token: str) -> tuple[grants_mod.Grant, ...]:
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["aud"] == "pacs"
        return grants_mod.from_claims(claims)

    def _visible(self, token: str, uid: str, perm: str) -> bool:
        info = self.studies[uid][0]
        return grants_mod.allows(self._grants(token), [perm], [info]) is not None

    def study(self, token: str, study_uid: str) -> grants_mod.StudyInfo | None:
        self.calls.append(f"study {study_uid}")
        if study_uid not in self.studies or not self._visible(token, study_uid, "view"):
            return None
        return self.studies[study_uid][0]

    def instances(self, token: str, orthanc_study: str) -> list[dict[str, Any]]:
        uid = orthanc_study.removeprefix("o-")
        assert self._visible(token, uid, "view")
        return [{"ID": sop, "ParentSeries": "s1", "MainDicomTags": {"SOPInstanceUID": sop, "InstanceNumber": str(i)}}
                for i, sop in enumerate(self.studies[uid][1], start=1)]

    def file(self, token: str, instance: str) -> bytes:
        uid = instance.rsplit(".", 2)[0]
        assert self._visible(token, uid, "download")
        return self.studies[uid][1][instance]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path}/bridge.db"
    db.migrate(url)
    eng = db.engine(url)
    with eng.begin() as conn:
        for sub, name, role, group in (("sub-alice", "rad.alice", "radiologist", "CN=Radiology,OU=Radiology"),
                                       ("sub-liam", "card.liam", "cardiologist", CARDIOLOGY),
                                       ("sub-ines", "card.ines", "cardiologist", CARDIOLOGY)):
            conn.execute(RoleAssignment.__table__.insert().values(
                subject_id=sub, username=name, role=role, source_group_dn=group, scopes={}, managed=True,
                created_at=dt.datetime.now(dt.UTC), updated_at=dt.datetime.now(dt.UTC)))
    audit = AuditStore(eng, CheckpointKey.generate())
    ring = KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()))
    pacs = MemoryPacs()
    pacs.add(STUDY, "Radiology")
    pacs.add(HIDDEN, "Oncology")
    clock = Clock()
    shares = ShareService(store=ShareStore(eng), policy=load_policy(POLICY).sharing, ring=ring, source=pacs,
                          issuer=ISSUER, pacs_audience="pacs", share_audience="https://127.0.0.1:9443/share",
                          link_base="https://127.0.0.1:9443/share", append=audit.append, clock=clock)
    tokens = TokenService(ring=ring, settings=TokenSettings(issuer=ISSUER, audience="pacs"), mfa_rule=mfa.MfaRule(),
                          keycloak=None, assignments=MemoryAssignmentSource({}), revocations=MemoryRevocationStore(),
                          role_permissions=DEFAULT_ROLE_PERMISSIONS, extra_grants=(shares.grants_for,))
    settings = load_config(store={"url": url})
    app = create_app(settings, token_service=tokens, audit_store=audit, share_service=shares,
                     config={"PACS_BRIDGE_RATE_LOGIN": "1000/second", "PACS_BRIDGE_RATE_TOKEN": "1000/second"})
    return {"client": app.test_client(), "tokens": tokens, "shares": shares, "audit": audit, "pacs": pacs,
            "clock": clock, "ring": ring}


def mint(env: dict[str, Any], sub: str = "sub-alice", perms: tuple[str, ...] = ("view", "download", "share"),
         departments: tuple[str, ...] = ("Radiology",), roles: tuple[str, ...] = ("radiologist",)) -> str:
    now = int(time.time())
    body = claims_mod.build(TokenSettings(issuer=ISSUER, audience="pacs"),
                            Subject(id=sub, username=sub, auth_time=now - 5, amr=("pwd", "otp")),
                            one_grant(roles, perms, departments=departments), "test", now=now)
    return str(env["ring"].sign(body))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def internal(**over: Any) -> dict[str, Any]:
    return {"study_uid": STUDY, "recipient": {"type": "user", "username": "card.liam"}, "purpose": "TREAT",
            "legal_basis": HEALTH_CARE, "lifetime": "2h", "permissions": ["view"], **over}


def external(**over: Any) -> dict[str, Any]:
    return {"study_uid": STUDY, "recipient": PARTNER, "purpose": "TREAT", "legal_basis": HEALTH_CARE,
            "lifetime": "24h", "max_uses": 3, "permissions": ["view"], **over}


def share_grants(env: dict[str, Any], sub: str) -> list[grants_mod.Grant]:
    svc = env["tokens"]
    return [g for g in svc.grant_for(Subject(id=sub, username=sub)).grants if g.kind == "share"]


def create(env: dict[str, Any], body: dict[str, Any], token: str | None = None) -> Any:
    return env["client"].post("/shares", json=body, headers=bearer(token or mint(env)))


def types(env: dict[str, Any]) -> list[str]:
    return [r["type"] for r in env["audit"].tail(50)]


# --------------------------------------------------------------------------- internal shares


def test_internal_share_reaches_the_recipients_next_token_and_ends_with_revocation(env):
    r = create(env, internal())
    assert r.status_code == 201, r.json
    share = r.json
    assert share["kind"] == "internal" and share["state"] == "active" and "passcode" not in share
    [grant] = share_grants(env, "sub-liam")
    assert grant.studies == {STUDY} and grant.permissions == {"view"} and grant.exp is not None
    assert share_grants(env, "sub-ines") == []  # a user share is for that user only
    assert "share.created" in types(env)
    r = env["client"].delete(f"/shares/{share['id']}", headers=bearer(mint(env)))
    assert r.status_code == 200 and r.json["state"] == "revoked"
    assert share_grants(env, "sub-liam") == []
    assert "share.revoked" in types(env)


def test_internal_share_ends_at_its_expiry(env):
    assert create(env, internal(lifetime="1h")).status_code == 201
    assert share_grants(env, "sub-liam")
    env["clock"].now += 3601
    assert share_grants(env, "sub-liam") == []


def test_group_share_reaches_every_member_the_sync_records(env):
    r = create(env, internal(recipient={"type": "group", "dn": CARDIOLOGY.lower()}))
    assert r.status_code == 201, r.json
    assert share_grants(env, "sub-liam") and share_grants(env, "sub-ines")
    assert share_grants(env, "sub-alice") == []


def test_group_the_sync_does_not_know_is_refused(env):
    r = create(env, internal(recipient={"type": "group", "dn": "CN=Nobody,OU=Groups,DC=hospital,DC=test"}))
    assert r.status_code == 400 and "recipient.dn" in r.json["error_description"]


def test_share_a_study_you_cannot_see_is_refused_and_audited(env):
    r = create(env, internal(study_uid=HIDDEN))
    assert r.status_code == 404
    assert types(env)[-1] == "access.denied"
    assert share_grants(env, "sub-liam") == []


def test_share_without_the_share_permission_is_refused(env):
    token = mint(env, perms=("view", "download"), roles=("clinician",))
    r = create(env, internal(), token)
    assert r.status_code == 403 and "share" in r.json["error_description"]


def test_share_a_permission_the_sharer_does_not_hold_is_refused(env):
    """The rule allows view + download; a sharer holding share and view only must not hand out download."""
    token = mint(env, perms=("view", "share"))
    r = create(env, internal(permissions=["view", "download"]), token)
    assert r.status_code == 403, r.json
    assert "download" in r.json["error_description"]
    assert share_grants(env, "sub-liam") == []


def test_share_held_in_one_grant_and_the_study_in_another_is_refused(env):
    """``share`` in a grant scoped to Oncology plus view of Radiology: no ONE grant holds share there."""
    now = int(time.time())
    g1 = one_grant(("a",), ("view", "share"), departments=("Oncology",)).grants
    g2 = one_grant(("b",), ("view",), departments=("Radiology",)).grants
    body = claims_mod.build(TokenSettings(issuer=ISSUER, audience="pacs"),
                            Subject(id="sub-alice", username="x", auth_time=now, amr=("otp",)),
                            claims_mod.Grant(("a", "b"), g1 + g2), "test", now=now)
    r = create(env, internal(), env["ring"].sign(body))
    assert r.status_code == 403


def test_bad_input_names_the_field(env):
    for body, field in ((internal(study_uid="1.2.x"), "study_uid"), (internal(purpose=None), "purpose"),
                        (internal(lifetime="soon"), "lifetime"), (internal(recipient={"type": "x"}), "recipient"),
                        (internal(max_uses=0), "max_uses"), (internal(permissions=["fly"]), "permissions")):
        r = create(env, body)
        assert r.status_code == 400 and field in r.json["error_description"], (field, r.json)


def test_policy_refusal_names_the_rule(env):
    r = create(env, internal(lifetime="30d"))
    assert r.status_code == 403 and "colleagues" in r.json["error_description"]


def test_authentication_is_required_and_one_header_only(env):
    c = env["client"]
    assert c.post("/shares", json=internal()).status_code == 401
    assert c.get("/shares", headers=bearer("not.a.token")).status_code == 401
    r = c.get("/shares", headers=[("Authorization", "Bearer " + mint(env)), ("Authorization", "Bearer x")])
    assert r.status_code == 400


def test_token_without_mfa_is_refused(env):
    now = int(time.time())
    body = claims_mod.build(TokenSettings(issuer=ISSUER, audience="pacs"),
                            Subject(id="sub-alice", username="x", auth_time=now, amr=("pwd",)),
                            one_grant(("radiologist",), ("view", "share")), "test", now=now)
    assert create(env, internal(), env["ring"].sign(body)).status_code == 401


def test_only_the_creator_lists_reads_and_revokes(env):
    share = create(env, internal()).json
    other = mint(env, sub="sub-ines")
    c = env["client"]
    assert [s["id"] for s in c.get("/shares", headers=bearer(mint(env))).json["shares"]] == [share["id"]]
    assert c.get("/shares", headers=bearer(other)).json["shares"] == []
    assert c.get(f"/shares/{share['id']}", headers=bearer(other)).status_code == 404
    assert c.delete(f"/shares/{share['id']}", headers=bearer(other)).status_code == 404
    assert share_grants(env, "sub-liam")


# --------------------------------------------------------------------------- external shares


def open_share(env: dict[str, Any], link: str, passcode: str, **kw: Any) -> Any:
    path = link.removeprefix("https://127.0.0.1:9443")
    return env["client"].post(path, data={"passcode": passcode}, **kw)


def test_external_share_link_and_passcode_serve_the_study_deidentified(env):
    r = create(env, external())
    assert r.status_code == 201, r.json
    share = r.json
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", share["passcode"])
    assert share["link"].startswith("https://127.0.0.1:9443/share/")
    r = open_share(env, share["link"], share["passcode"])
    assert r.status_code == 303, r.data
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-pacs-share=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    page = env["client"].get("/share/s/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Doe" not in text and "MRN-4711" not in text and f"{STUDY}.1.1" not in text
    assert "2.25." in text
    assert env["client"].get("/share/s/study.zip").status_code == 403  # view only
    assert "share.used" in types(env)


def test_external_share_zip_is_deidentified_consistent_within_and_different_across_shares(env):
    files = []
    for _ in range(2):
        share = create(env, external(recipient={**PARTNER, "email": "eve@imaging-research.example"},
                                     purpose="HRESCH", legal_basis=HEALTH_CARE,
                                     permissions=["view", "download"])).json
        assert "link" in share, share
        env["client"].delete_cookie("__Host-pacs-share", path="/")
        assert open_share(env, share["link"], share["passcode"]).status_code == 303
        r = env["client"].get("/share/s/study.zip")
        assert r.status_code == 200 and r.mimetype == "application/zip"
        z = zipfile.ZipFile(io.BytesIO(r.data))
        files.append([dcmread(io.BytesIO(z.read(n))) for n in sorted(z.namelist())])
        raw = b"".join(z.read(n) for n in z.namelist())
        assert b"Doe" not in raw and b"MRN-4711" not in raw and b"ACC-1" not in raw and STUDY.encode() not in raw
    a, b = files
    assert len(a) == 3 and all(ds.PatientIdentityRemoved == "YES" for ds in a)
    assert len({ds.StudyInstanceUID for ds in a}) == 1 and len({ds.SOPInstanceUID for ds in a}) == 3
    assert a[0].StudyInstanceUID != b[0].StudyInstanceUID
    assert "share.exported" in types(env)


def test_wrong_passcode_then_lockout_after_five_then_new_passcode(env):
    share = create(env, external()).json
    for i in range(4):
        assert open_share(env, share["link"], "WRONG-WRONG-WRON").status_code == 401, i
    assert open_share(env, share["link"], "WRONG-WRONG-WRON").status_code == 429
    # locked: even the right passcode fails from this address
    assert open_share(env, share["link"], share["passcode"]).status_code == 429
    # another address is not locked out
    r = open_share(env, share["link"], share["passcode"], environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert r.status_code == 303
    assert {"share.passcode_failed", "share.locked_out"} <= set(types(env))
    renewed = env["client"].post(f"/shares/{share['id']}/passcode", headers=bearer(mint(env))).json
    assert renewed["passcode"] != share["passcode"]
    assert open_share(env, share["link"], share["passcode"]).status_code == 401  # the old one is gone
    env["client"].delete_cookie("__Host-pacs-share", path="/")
    assert open_share(env, share["link"], renewed["passcode"]).status_code == 303


def test_new_passcode_ends_sessions_opened_with_the_old_one(env):
    share = create(env, external()).json
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    assert env["client"].get("/share/s/").status_code == 200
    env["client"].post(f"/shares/{share['id']}/passcode", headers=bearer(mint(env)))
    assert env["client"].get("/share/s/").status_code == 401


def test_use_count_expiry_and_revocation_are_enforced(env):
    share = create(env, external(max_uses=2)).json
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    assert open_share(env, share["link"], share["passcode"]).status_code == 410  # no use left
    share2 = create(env, external()).json
    assert open_share(env, share2["link"], share2["passcode"]).status_code == 303
    assert env["client"].get("/share/s/").status_code == 200
    env["client"].delete(f"/shares/{share2['id']}", headers=bearer(mint(env)))
    assert env["client"].get("/share/s/").status_code == 401  # the open session ends at once
    assert open_share(env, share2["link"], share2["passcode"]).status_code == 410  # a revoked link
    share3 = create(env, external(lifetime="1h")).json
    env["clock"].now += 3601
    assert open_share(env, share3["link"], share3["passcode"]).status_code == 410


def test_external_share_without_deidentification_is_refused_by_policy(env):
    r = create(env, external(deidentify=False))
    assert r.status_code == 403 and "de-identification" in r.json["error_description"]


def test_passcode_in_the_query_string_is_ignored(env):
    share = create(env, external()).json
    path = share["link"].removeprefix("https://127.0.0.1:9443")
    r = env["client"].get(f"{path}?passcode={share['passcode']}")
    assert r.status_code == 200 and "ignored" in r.get_data(as_text=True)
    assert "__Host-pacs-share" not in r.headers.get("Set-Cookie", "")
    for spelling in ("passcode", "Passcode", "PASSCODE"):
        r = env["client"].post(f"{path}?{spelling}={share['passcode']}")
        assert r.status_code == 400 and "Set-Cookie" not in r.headers, spelling
    r = env["client"].get(f"{path}?PassCode={share['passcode']}")
    assert "ignored" in r.get_data(as_text=True)
    assert "share.passcode_failed" not in types(env)  # nothing was tried
    # other routes to the same form: a trailing slash or HEAD open nothing either
    assert env["client"].post(path + "/", data={"passcode": share["passcode"]}).status_code in (404, 405)
    assert "Set-Cookie" not in env["client"].head(path).headers


def test_repeated_passcode_field_and_repeated_cookie_are_refused(env):
    share = create(env, external()).json
    path = share["link"].removeprefix("https://127.0.0.1:9443")
    r = env["client"].post(path, data={"passcode": [share["passcode"], "x"]})
    assert r.status_code == 400
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    token = env["client"].get_cookie("__Host-pacs-share").value
    bare = env["client"].application.test_client(use_cookies=False)
    assert bare.get("/share/s/", headers={"Cookie": f"__Host-pacs-share={token}"}).status_code == 200
    r = bare.get("/share/s/", headers={"Cookie": f"__Host-pacs-share={token}; __Host-pacs-share={token}"})
    assert r.status_code == 401


def test_share_token_is_refused_by_the_pacs_and_a_pacs_token_is_no_share_session(env):
    share = create(env, external()).json
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    token = env["client"].get_cookie("__Host-pacs-share").value
    assert env["tokens"].verify_own(token) is None  # the PACS verifier: wrong audience
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "https://127.0.0.1:9443/share"
    env["client"].set_cookie("__Host-pacs-share", mint(env), path="/")
    assert env["client"].get("/share/s/").status_code == 401


def test_unknown_link_and_an_internal_share_have_no_public_page(env):
    assert open_share(env, "/share/" + "x" * 43, "AAAA-BBBB-CCCC").status_code == 404
    assert "share.passcode_failed" in types(env)


def test_burned_in_instances_are_left_out_of_the_zip(env):
    env["pacs"].add("1.2.826.0.1.3680043.10.1137.900.3", "Radiology", n=2, modality="US")
    share = create(env, external(study_uid="1.2.826.0.1.3680043.10.1137.900.3",
                                 recipient={**PARTNER, "email": "eve@imaging-research.example"},
                                 purpose="HRESCH", permissions=["view", "download"])).json
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    r = env["client"].get("/share/s/study.zip")
    assert r.status_code == 200 and zipfile.ZipFile(io.BytesIO(r.data)).namelist() == []
    exported = env["audit"].tail(1)[0]
    assert exported["type"] == "share.exported" and '"refused":2' in exported["body"]


# --------------------------------------------------------------------------- audit API filter


def test_auditor_filters_by_share(env):
    a = create(env, internal()).json
    b = create(env, external()).json
    open_share(env, b["link"], "WRONG-WRONG-WRON")
    now = int(time.time())
    body = claims_mod.build(TokenSettings(issuer=ISSUER, audience="pacs"),
                            Subject(id="aud-1", username="audit.anne", auth_time=now, amr=("otp",)),
                            one_grant(("auditor",), (P.AUDIT_LOGS.value,)), "test", now=now)
    auditor = bearer(env["ring"].sign(body))
    r = env["client"].get(f"/audit/events?share={b['id']}", headers=auditor)
    assert r.status_code == 200
    assert [e["type"] for e in r.json["events"]] == ["share.created", "share.passcode_failed"]
    r = env["client"].get(f"/audit/events?share={a['id']}&type=share.created", headers=auditor)
    assert [e["type"] for e in r.json["events"]] == ["share.created"]
    assert env["client"].get(f"/audit/events?share={a['id']}&share=x", headers=auditor).status_code == 400


def test_worker_processes_give_the_same_files_as_inline(env):
    share = create(env, external(recipient={**PARTNER, "email": "eve@imaging-research.example"},
                                 purpose="HRESCH", permissions=["view", "download"])).json
    assert open_share(env, share["link"], share["passcode"]).status_code == 303
    inline = env["client"].get("/share/s/study.zip").data
    env["shares"].deidentify_workers = 2
    pooled = env["client"].get("/share/s/study.zip").data
    read = lambda data: {n: z.read(n) for z in [zipfile.ZipFile(io.BytesIO(data))] for n in z.namelist()}  # noqa: E731
    assert read(inline) == read(pooled) and len(read(pooled)) == 3


# ---- found by the attack review (each failed before its fix)


def test_a_share_to_oneself_is_refused(env: Any) -> None:
    """A share to oneself would be a grant no sync removes: it outlived the sharer's own role."""
    liam = mint(env, sub="sub-liam", roles=("radiologist",))
    r = create(env, internal(recipient={"type": "user", "username": "card.liam"}, lifetime="14d"), token=liam)
    assert r.status_code == 400 and "yourself" in r.json["error_description"]


def test_a_share_ends_when_its_sharer_loses_the_role_that_holds_share(env: Any) -> None:
    """rad.alice (radiologist: holds share) shares with card.liam; the sync then removes alice's
    role: the share must stop granting anything at liam's next token."""
    from sqlalchemy import delete

    from bridge.store.models import RoleAssignment

    env["shares"].share_roles = frozenset({"radiologist"})  # what from_settings derives from the policy
    r = create(env, internal())
    assert r.status_code == 201, r.json
    assert share_grants(env, "sub-liam")  # live while the sharer holds `share`
    with env["shares"].store.engine.begin() as c:
        c.execute(delete(RoleAssignment).where(RoleAssignment.subject_id == "sub-alice"))
    assert share_grants(env, "sub-liam") == []


def test_parallel_wrong_passcodes_from_one_address_are_each_counted_first(env: Any, monkeypatch: Any) -> None:
    """Checked first and counted after, ten parallel guesses were all tried; counted first, at most
    the limit are."""
    import contextlib
    import threading

    import bridge.sharing.service as service_mod

    r = create(env, external())
    assert r.status_code == 201, r.json
    link = r.json["link"].rsplit("/", 1)[1]
    svc = env["shares"]
    tried: list[str] = []
    real_check = service_mod.check_passcode

    def counting(p: str, h: str) -> bool:
        tried.append(p)
        return real_check(p, h)

    monkeypatch.setattr(service_mod, "check_passcode", counting)

    def one(i: int) -> None:
        with contextlib.suppress(service_mod.ShareError):
            svc.open(link, f"WRONG-{i:04d}-XXXX", "203.0.113.7")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tried) <= svc.lockout_failures


def test_an_ipv6_client_cannot_hop_addresses_within_its_64() -> None:
    from bridge.sharing.service import source_key

    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("::ffff:203.0.113.7") == source_key("203.0.113.7") == "203.0.113.7"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
