"""The sync into the real Keycloak (realm roles, managed marker, LDAP user sync), the real SCIM
server of the dev stack, and from the real OpenLDAP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sync_helpers import RADIOLOGY, TECHNOLOGISTS, directory_section, make_runner, need

from bridge.directory.reader import reader_for
from bridge.policy.evaluate import evaluate
from bridge.policy.loader import load_policy
from bridge.store.db import engine as make_engine
from bridge.sync.targets.keycloak import KeycloakTarget
from bridge.sync.targets.scim import MARKER, ScimTarget
from bridge.sync.targets.store import StoreTarget

pytestmark = pytest.mark.integration


def kc_target(stack: dict[str, Any], ctx: Any, **kw: Any) -> KeycloakTarget:
    need(stack, "keycloak", "samba")
    kc = stack["keycloak"]
    return KeycloakTarget(kc["url"], kc["realm"], kc["admin_username"], ctx.secret(kc["admin_password_secret"]),
                          ca_file=ctx.ca_file, **kw)


def kc_roles(t: KeycloakTarget, username: str) -> set[str]:
    uid = t.admin.get_user_id(username)
    return {r["name"] for r in t.admin.get_realm_roles_of_user(uid)}


def test_keycloak_apply_keeps_hand_assigned_roles_and_is_idempotent(stack, ctx, ad, db_url) -> None:  # type: ignore[no-untyped-def]
    t = kc_target(stack, ctx)
    t.admin.create_realm_role({"name": "teaching-file-manual", "description": "assigned by IT by hand"},
                              skip_exists=True)
    t.prepare(full=True)
    alice = t.admin.get_user_id("rad.alice")
    t.admin.assign_realm_roles(alice, [t.admin.get_realm_role("teaching-file-manual")])
    rep = make_runner(ad, db_url, [t]).run(apply=True, full=True)
    assert rep.status == "ok", (rep.errors, rep.results[0].failures if rep.results else None)
    assert {"radiologist", "clinician", "teaching-file-manual"} <= kc_roles(t, "rad.alice")
    assert "clinician" in rep.plan.targets[0].role_creations or "clinician" in t._roles
    assert kc_roles(t, "ref.zoe") >= {"referring-physician"} and "clinician" not in kc_roles(t, "ref.zoe")
    again = make_runner(ad, db_url, [kc_target(stack, ctx)]).run(apply=True, full=True)
    assert again.status == "ok" and again.plan.empty, again.plan
    assert "teaching-file-manual" in kc_roles(t, "rad.alice")


def test_keycloak_joiner_leaver_and_error_on_one_user(stack, ctx, ad, db_url, ad_users) -> None:  # type: ignore[no-untyped-def]
    assert make_runner(ad, db_url, [kc_target(stack, ctx)]).run(apply=True, full=True).status in ("ok", "partial")
    a, a_dn = ad_users.create((TECHNOLOGISTS,))
    b, _ = ad_users.create((TECHNOLOGISTS,))
    t = kc_target(stack, ctx)
    runner = make_runner(ad, db_url, [t])
    snap, desired, _actuals, plan, _ = runner.compute(full=True)
    sid_b = next(u.id for u in snap.users.values() if u.username == b)
    t._kc_user[sid_b] = "00000000-0000-0000-0000-000000000000"  # Keycloak will answer 404 for b only
    res = t.apply(plan.targets[0], desired)
    assert res.added >= 1 and [f["user"] for f in res.failures] == [b]
    assert "technologist" in kc_roles(t, a)
    retry = make_runner(ad, db_url, [kc_target(stack, ctx)]).run(apply=True, full=True)  # retried next run
    assert retry.status == "ok" and "technologist" in kc_roles(t, b)
    ad_users.disable(a_dn)
    left = make_runner(ad, db_url, [kc_target(stack, ctx)]).run(apply=True, full=True)
    assert left.status == "ok" and left.results[0].leavers == 1
    assert "technologist" not in kc_roles(t, a)


def test_scim_target_groups_members_and_mover(stack, ctx, ad, db_url, ad_users) -> None:  # type: ignore[no-untyped-def]
    need(stack, "scim")
    url, token = stack["scim"]["url"], ctx.secret(stack["scim"]["bearer_token_secret"])
    ca = stack["scim"]["ca_file"]  # the SCIM double serves HTTPS with the dev CA's certificate
    name, dn = ad_users.create((RADIOLOGY,))
    rep = make_runner(ad, db_url, [ScimTarget(url, token, verify=ca)]).run(apply=True, full=True)
    assert rep.status == "ok", rep.results[0].failures
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, verify=ca)
    groups = {g["displayName"]: g for g in http.get("/Groups", params={"count": 500}).json()["Resources"]
              if str(g.get("externalId", "")).startswith(MARKER)}
    users = {u["id"]: u for u in http.get("/Users", params={"count": 1000}).json()["Resources"]}
    rad = {users[m["value"]]["userName"] for m in groups["radiologist"].get("members", [])}
    assert {"rad.alice", name} <= rad
    assert all(users[m["value"]]["externalId"] for m in groups["radiologist"]["members"])
    assert make_runner(ad, db_url, [ScimTarget(url, token, verify=ca)]).run(apply=True, full=True).plan.empty
    ad_users.remove_from(dn, RADIOLOGY)
    moved = make_runner(ad, db_url, [ScimTarget(url, token, verify=ca)]).run(apply=True, full=True)
    assert moved.status == "ok" and {c.role for c in moved.plan.targets[0].removals} == {"radiologist", "clinician"}


def test_openldap_gives_the_same_roles_as_ad(stack, ctx, db_url) -> None:  # type: ignore[no-untyped-def]
    need(stack, "slapd", "samba")
    pol = load_policy("examples/policy.yaml")
    ldap_snap = reader_for(directory_section(stack, ctx, "slapd")).read()
    ad_snap = reader_for(directory_section(stack, ctx, "samba")).read()

    def by_name(snap: Any) -> dict[str, frozenset[str]]:
        return {e.user.username: e.roles for e in evaluate(snap, pol).entitlements.values()}

    ldap_roles, ad_roles = by_name(ldap_snap), by_name(ad_snap)
    assert ldap_roles["rad.res.eli"] == {"radiologist", "radiology-resident", "clinician"}  # nested
    assert ldap_roles["rad.old.ray"] == frozenset()  # disabled by pwdAccountLockedTime
    for u in ("rad.alice", "tech.tom", "it.ivan", "ref.zoe", "comp.mila", "rad.bruno"):
        assert ldap_roles[u] == ad_roles[u], u
    section = directory_section(stack, ctx, "slapd")
    runner = make_runner(section, db_url, [StoreTarget(make_engine(db_url))])
    assert runner.run(apply=True, full=True).status == "ok"
    assert runner.run(apply=True, full=False).status == "unchanged"
