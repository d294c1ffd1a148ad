"""The composition root: the one place that builds the bridge's long-lived objects from the settings.

A :class:`Services` builds, on first use, and then keeps one database engine (one connection pool
per process), the audit store, the signing key ring, the token service and the Keycloak admin
client, all over the same engine.  The web app, the CLI, ``serve`` and the dev stack ask it
instead of each wiring the pieces by hand, so every caller gets the same checkpoint signing, key
encryption and audit sink.

It sits at the top of the package: it imports the areas below it (store, audit, tokens, oidc) and
only the outer layers (web, cli, devstack) import it.  The areas' own CLI modules
(``bridge/audit/cli.py``, ``bridge/tokens/cli.py``, ``bridge/sync``) cannot import it without an
import cycle and keep calling their area's builder (``open_store``, ``key_ring``, ``build_runner``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.config import Settings

if TYPE_CHECKING:
    from keycloak import KeycloakAdmin
    from sqlalchemy.engine import Engine

    from bridge.audit.store import AuditStore
    from bridge.breakglass.service import BreakGlass
    from bridge.sharing.service import ShareService
    from bridge.tokens.service import TokenService
    from bridge.tokens.store import KeyRing


class Services:
    """Lazily built, cached services of one process.  Objects passed in (e.g. an injected
    ``audit_store`` in tests) are used instead of building them."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None, audit_store: AuditStore | None = None,
                 token_service: TokenService | None = None):
        self.settings = settings
        if engine is not None:
            self.__dict__["engine"] = engine
        if audit_store is not None:
            self.adopt_audit_store(audit_store)
        if token_service is not None:
            self.__dict__["token_service"] = token_service

    def adopt_audit_store(self, store: AuditStore) -> None:
        """Use ``store`` (made elsewhere, e.g. injected into the app) unless one is built already;
        its engine becomes this process's engine if none is built yet (one connection pool)."""
        self.__dict__.setdefault("audit_store", store)
        if getattr(store, "engine", None) is not None:
            self.__dict__.setdefault("engine", store.engine)

    @cached_property
    def engine(self) -> Engine:
        from bridge.store.db import engine_for

        return engine_for(self.settings)

    @cached_property
    def audit_store(self) -> AuditStore:
        from bridge.audit.store import open_store

        return open_store(self.settings, self.engine)

    @cached_property
    def key_ring(self) -> KeyRing:
        from bridge.tokens.store import key_ring

        return key_ring(self.settings, self.engine)

    @cached_property
    def keycloak_admin(self) -> KeycloakAdmin:
        """The Keycloak admin API client (raises :class:`bridge.kcadmin.NoAdminCredentials` when
        ``keycloak.admin_password`` is not set)."""
        from bridge.kcadmin import admin_from_settings

        return admin_from_settings(self.settings.keycloak)

    @cached_property
    def shares(self) -> ShareService:
        """Study shares (bridge/sharing/service.py); its events go straight to :attr:`audit_store`."""
        from bridge.sharing.service import from_settings

        return from_settings(self.settings, self.engine, self.key_ring, self.audit_store.append)

    @cached_property
    def break_glass(self) -> BreakGlass:
        """Emergency access: requests, the grants they yield (a grant source of the token service),
        the review queue; records go straight to :attr:`audit_store`, alerts to syslog and the webhook."""
        from bridge.breakglass import alerts, service

        return service.from_settings(self.settings, self.engine, self.audit_store.append,
                                     alerts.from_settings(self.settings))

    @cached_property
    def token_service(self) -> TokenService:
        """The token service over the bridge's database, Keycloak and policy, as configured; its
        events go to :attr:`audit_store` through a crash-safe journal (bridge/tokens/auditing.py)."""
        from bridge.core import mfa
        from bridge.core.audit_codes import AuditEventType
        from bridge.oidc.state import SqlEndedSessions
        from bridge.store.db import one_connection
        from bridge.tokens.auditing import BufferedAuditSink
        from bridge.tokens.claims import TokenSettings
        from bridge.tokens.roles import role_permissions, role_scopes
        from bridge.tokens.service import KeycloakSettings, KeycloakTokenValidator, TokenService, https_fetch
        from bridge.tokens.store import SqlAssignmentSource, SqlRevocationStore

        settings, eng = self.settings, self.engine
        kc = settings.keycloak
        issuer = settings.tokens.issuer or settings.bridge.public_url
        validator = KeycloakTokenValidator(
            KeycloakSettings(
                issuer=f"{kc.url}/realms/{kc.realm}",
                audience=settings.tokens.subject_token_audience or kc.client_id,
                allowed_clients=frozenset(settings.tokens.subject_token_clients),
            ),
            https_fetch(str(kc.ca_file) if kc.ca_file else None),
        )
        # the journal keeps answered exchanges' events through a crash of the worker (auditing.py)
        from bridge.kek import audit_file_keys

        audit = BufferedAuditSink(self.audit_store, issuer,
                                  journal_dir=Path(settings.audit.spool_dir) / "token-journal",
                                  journal_keys=audit_file_keys(settings))
        ring = self.key_ring
        ring.on_unusable = lambda kid, why: audit(
            AuditEventType.ACCESS_DENIED,
            {"client_id": "key-ring", "kid": kid, "reason": f"signing key withheld from the JWKS: {why}"},
        )
        ttl = max(24 * 3600, settings.bridge.session_absolute_hours * 3600)
        return TokenService(
            ring=ring,
            settings=TokenSettings(
                issuer=issuer,
                audience=settings.pacs.audience,
                lifetime_seconds=settings.tokens.lifetime_seconds,
                max_lifetime_seconds=settings.tokens.max_lifetime_seconds,
            ),
            mfa_rule=mfa.MfaRule.from_section(settings.mfa),
            keycloak=validator,
            assignments=SqlAssignmentSource(eng),  # read at every issue: a removed role must not linger
            revocations=SqlRevocationStore(eng),
            ended_sessions=SqlEndedSessions(eng, ttl_seconds=ttl),
            read_scope=lambda: one_connection(eng),
            role_permissions=role_permissions(settings.sync.policy_file),
            role_scopes=role_scopes(settings.sync.policy_file),
            audit=audit,
            # grants beyond the roles: internal shares (bridge/sharing), emergency access (bridge/breakglass)
            extra_grants=(self.shares.grants_for, self.break_glass.grants),
        )


def for_settings(settings: Settings, **given: Any) -> Services:
    """A new :class:`Services` (the name callers read: ``services.for_settings(settings)``)."""
    return Services(settings, **given)


#: where a Flask app keeps its :class:`Services` (``app.extensions``)
APP_EXTENSION = "pacs_bridge_services"


def of_app(app: Any) -> Services:
    """The web app's one :class:`Services` (made from ``BRIDGE_SETTINGS`` on first use):
    its audit store and token service share one engine per worker."""
    found = app.extensions.get(APP_EXTENSION)
    if found is None:
        found = app.extensions[APP_EXTENSION] = Services(app.config["BRIDGE_SETTINGS"])
    return found  # type: ignore[no-any-return]
