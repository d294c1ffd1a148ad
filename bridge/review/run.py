"""Gather everything a review needs from the running deployment and start a campaign.

The one place that knows every source: the directory (read like the sync reads it), the
policy, the bridge's assignment rows, the audit trail's facts, Keycloak's accounts and role
members.  ``pacs-bridge review run``, ``serve``'s monthly job and the benchmark call it."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import Engine, select

from bridge.review import facts
from bridge.review.build import KeycloakFacts, Review, StoredAssignment, build_review, scoped_departments
from bridge.store.db import session
from bridge.store.models import ReviewCampaign, RoleAssignment

log = logging.getLogger(__name__)


def stored_assignments(engine: Engine) -> list[StoredAssignment]:
    t = RoleAssignment
    with session(engine) as s:
        return [StoredAssignment(r.subject_id, r.username, r.role, r.source_group_dn or "", r.rule_id, bool(r.managed))
                for r in s.execute(select(t.subject_id, t.username, t.role, t.source_group_dn, t.rule_id, t.managed))]


def previous_start(engine: Engine) -> str | None:
    with session(engine) as s:
        when = s.scalars(select(ReviewCampaign.started_at).order_by(ReviewCampaign.id.desc()).limit(1)).first()
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when else None


def compute(engine: Engine, snapshot: Any, policy: Any, *, issuer: str, keycloak: KeycloakFacts | None,
            dormant_days: int, now: dt.datetime | None = None,
            target_accounts: dict[str, dict[str, str]] | None = None) -> Review:
    """The review from the store and the given snapshot/Keycloak facts (SQL aggregation for the trail)."""
    from bridge.review import exceptions

    now = now or dt.datetime.now(dt.UTC)
    since = previous_start(engine) or (now - dt.timedelta(days=dormant_days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assignments = stored_assignments(engine)
    excepted = {k: e.describe() for k, e in exceptions.by_key(engine, now).items()}
    review = build_review(snapshot, policy, assignments=assignments, activity=facts.activity(engine),
                          hand=facts.hand_assignments(engine, since), keycloak=keycloak, excepted=excepted,
                          dormant_days=dormant_days, now=now, target_accounts=target_accounts)
    scoped = scoped_departments(policy, review.users)
    checks = facts.out_of_scope(engine, scoped, [issuer])
    for sid, check in checks.items():
        u = review.users.get(sid)
        if u is not None and check.count:
            u.flags.add("out-of-scope")
            u.evidence["out-of-scope"] = {"count": check.count, "departments": sorted(check.departments),
                                          "examples": check.examples}
    return review


def run_review(settings: Any, *, started_by: str, policy_path: str | None = None) -> int:
    """Read the directory, Keycloak and the store, compute the review, start the campaign."""
    from bridge.audit.keycloak_events import bridge_issuer
    from bridge.directory.reader import reader_for
    from bridge.kcadmin import NoAdminCredentials, admin_from_settings
    from bridge.policy.loader import PolicyError, load_policy
    from bridge.review import campaign
    from bridge.review.keycloak import keycloak_facts
    from bridge.services import Services
    from bridge.store.db import migrate

    path = policy_path or settings.sync.policy_file
    if not path:
        raise PolicyError("(config)", [("sync.policy_file", "not set; name the policy YAML file")])
    policy = load_policy(path)
    if policy.reviewers is None:
        raise PolicyError(str(path), [("reviewers", "missing: an access review needs reviewers (docs/governance.md)")])
    migrate(settings.store.url)
    services = Services(settings)
    snapshot = reader_for(settings.directory).read(None, full=True)
    kc: KeycloakFacts | None = None
    try:
        kc = keycloak_facts(admin_from_settings(settings.keycloak), policy.roles,
                            mode=settings.sync.keycloak_roles, client_id=settings.keycloak.pacs_client_id)
    except NoAdminCredentials:
        log.warning("review: keycloak.admin_password not set; Keycloak accounts and role members not reviewed")
    review = compute(services.engine, snapshot, policy, issuer=bridge_issuer(settings), keycloak=kc,
                     dormant_days=settings.review.dormant_days, target_accounts=_target_accounts(settings))
    return campaign.start(services.engine, review, started_by=started_by, deadline_days=settings.review.deadline_days,
                          policy_source=str(path), audit=services.audit_store)


def _target_accounts(settings: Any) -> dict[str, dict[str, str]]:
    """The accounts of the PACS targets the sync provisions besides Keycloak and the store: a SCIM
    PACS's Users by their ``externalId`` (the directory id), for the orphan flag."""
    if "scim" not in settings.sync.targets:
        return {}
    from bridge import scim_client

    client = scim_client.from_settings(settings)
    if client is None:
        return {}
    try:
        return {"scim": client.accounts()}
    except scim_client.ScimError as exc:  # the review still runs; the gap is said
        log.warning("review: the SCIM PACS's accounts could not be read (%s); SCIM orphans not reviewed", exc)
        return {}
