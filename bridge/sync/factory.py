"""Build a SyncRunner from the configuration (the only place that knows every section)."""

from __future__ import annotations

from typing import Any

from bridge.config import Settings
from bridge.directory.reader import reader_for
from bridge.policy.loader import PolicyError, load_policy
from bridge.store.db import migrate_store
from bridge.sync.runner import SyncRunner
from bridge.sync.safety import Thresholds
from bridge.sync.targets.base import Target, TargetError


def build_targets(settings: Settings, engine: Any) -> list[Target]:
    out: list[Target] = []
    for name in settings.sync.targets:
        if name == "store":
            from bridge.sync.targets.store import StoreTarget

            out.append(StoreTarget(engine))
        elif name == "keycloak":
            from bridge.sync.targets.keycloak import KeycloakTarget

            kc = settings.keycloak
            if kc.admin_password is None:
                raise TargetError("keycloak.admin_password is not set (needed by the keycloak sync target)")
            out.append(KeycloakTarget(kc.url, kc.realm, kc.admin_username, kc.admin_password.get_secret_value(),
                                      admin_realm=kc.admin_realm, ca_file=kc.ca_file,
                                      mode=settings.sync.keycloak_roles, client_id=kc.pacs_client_id))
        elif name == "scim":
            from bridge.sync.targets.scim import ScimTarget

            sc = settings.scim
            if not sc.url or sc.bearer_token is None:
                raise TargetError("scim.url and scim.bearer_token are needed by the scim sync target")
            out.append(ScimTarget(sc.url, sc.bearer_token.get_secret_value(),
                                  verify=str(sc.ca_file) if sc.ca_file else True))
    return out


def revoke_subject_hook(engine: Any, max_token_lifetime: int) -> Any:
    """Leavers' PACS tokens: the token service's revoke-by-subject watermark, kept as long as
    the longest token it may cover (``tokens.max_lifetime_seconds``)."""
    from bridge.tokens.store import revoke_subject

    return lambda subject: revoke_subject(engine, subject, max_token_lifetime=max_token_lifetime)


def build_runner(settings: Settings, *, policy_path: str | None = None, with_audit: bool = True) -> SyncRunner:
    path = policy_path or settings.sync.policy_file
    if not path:
        raise PolicyError("(config)", [("sync.policy_file", "not set; name the policy YAML file")])
    policy = load_policy(path)
    migrate_store(settings)
    from bridge.services import Services

    services = Services(settings)  # the composition root: one engine under the runner and its audit store
    eng = services.engine
    audit = services.audit_store if with_audit else None
    return SyncRunner(
        reader_for(settings.directory), policy, build_targets(settings, eng), eng,
        thresholds=Thresholds(settings.sync.deletion_threshold_count, settings.sync.deletion_threshold_percent),
        audit=audit, revoke_subject=revoke_subject_hook(eng, settings.tokens.max_lifetime_seconds),
        full_sync_every=settings.sync.full_sync_every,
    )
