"""One decision per Orthanc HTTP request: token -> route permission -> study scope -> audit.

Orthanc-agnostic (Orthanc's REST API comes in as two callables) so the whole decision can be
unit-tested and reused by another Python PACS front-end; :mod:`bridge.pacs.orthanc_plugin` is
only the glue.  Stdlib + PyJWT/cryptography only.

Order, cheapest first, every step fails closed:

1. method known (GET/POST/PUT/DELETE), else deny;
2. ``Authorization: Bearer`` parsed (scheme case-insensitive, one token, size-capped) and
   verified by :class:`bridge.pacs.verifier.Verifier` (signature, claims, MFA, revocation; a
   cache hit on repeated tokens);
3. the route table (:mod:`bridge.pacs.routes`) gives the permission; unknown route: deny;
4. a token with department/institution scopes may only touch studies inside them: the study
   behind the URI is resolved through Orthanc and cached; requests across studies (lists,
   queries, bulk tools) are denied to scoped tokens, because Orthanc 1.10.1's filter cannot
   filter an answer (it can only allow or deny);
5. every denial and every allowed request on patient data is recorded for the audit trail.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any

from bridge.pacs import scopes
from bridge.pacs.audit_shipper import ACCESS_EVENTS, AuditShipper
from bridge.pacs.plugin_config import PluginConfig
from bridge.pacs.verifier import Fetch, VerificationError, Verifier, VerifierConfig, bearer_token, decide
from bridge.tokens import mfa

#: Orthanc's ``method`` argument (OrthancPluginHttpMethod)
METHODS: dict[int, str] = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}
#: permissions that touch no existing patient data, so a scoped token needs no study check
SCOPE_FREE = frozenset({"upload", "settings", "admin", "audit-logs"})
#: permissions whose study must be resolved *before* the request runs (it may be gone after)
RESOLVE_FIRST = frozenset({"delete", "modify", "anonymize", "send"})
SCOPED_LIST_REASON = (
    "scoped token: a request across studies (list, query, bulk tool) cannot be filtered by "
    "Orthanc 1.10.1's request filter; open studies by id"
)


def verifier_config(config: PluginConfig) -> VerifierConfig:
    """The verifier settings of a plugin config (one mapping, used by the plugin and the bench)."""
    rule = mfa.MfaRule(
        required_acr=config.mfa_required_acr or None,
        accepted_amr=frozenset(config.mfa_accepted_amr),
        max_auth_age_seconds=config.mfa_max_auth_age_seconds,
    )
    return VerifierConfig(
        issuer=config.issuer,
        audience=config.audience,
        jwks_url=config.jwks_url,
        ca_file=config.ca_file,
        algorithms=config.algorithms,
        leeway_seconds=config.leeway_seconds,
        jwks_min_refresh_seconds=config.jwks_min_refresh_seconds,
        revocation_url=config.revocation_url,
        revocation_refresh_seconds=config.revocation_refresh_seconds,
        revocation_max_stale_seconds=config.revocation_max_stale_seconds,
        mfa_rule=rule,
    )


class Gate:
    """The plugin's state for one configuration: verifier, study resolver, audit shipper."""

    def __init__(
        self,
        config: PluginConfig,
        rest_get: scopes.RestGet,
        rest_post: scopes.RestPost,
        fetch: Fetch | None = None,
        shipper: AuditShipper | None = None,
    ):
        self.config = config
        self.verifier = Verifier(verifier_config(config), fetch=fetch)
        self.resolver = scopes.StudyResolver(rest_get, rest_post, ttl=config.scope_cache_seconds)
        self.audit = shipper or AuditShipper(
            source=config.pacs_name,
            issuer=config.issuer,
            spool_dir=config.audit_spool_dir,
            audit_url=config.audit_url,
            audit_token_file=config.audit_token_file,
            ca_file=config.ca_file,
            flush_seconds=config.audit_flush_seconds,
            resolver=self.resolver,
            orthanc_log_file=config.orthanc_log_file,
        )
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None

    # ------------------------------------------------------------------ background work

    def start(self) -> None:
        """Audit shipping, and revocation-list refreshes off the request path."""
        self.audit.start()
        if self.config.revocation_url and self._maintenance is None:
            self._maintenance = threading.Thread(target=self._refresh_loop, name="pacs-bridge-revocations",
                                                 daemon=True)
            self._maintenance.start()

    def stop(self) -> None:
        self._stop.set()
        self.audit.stop()

    def _refresh_loop(self) -> None:
        # wake at half the refresh period and renew once the list is that old: the request path's
        # own "due after revocation_refresh_seconds" check then never fires while this thread runs
        period = max(0.2, self.config.revocation_refresh_seconds / 2)
        while True:
            # failures are fine here: staleness is enforced on the request path
            with contextlib.suppress(Exception):
                self.verifier.refresh_revocations(time.time(), max_age=period)
            if self._stop.wait(period):
                return

    # ------------------------------------------------------------------ the decision

    def decide(
        self, uri: str, method: int, headers: Mapping[str, str], get: Mapping[str, str] | None, ip: str = ""
    ) -> bool:
        """True to let Orthanc serve the request.  Raises only on bugs (the caller denies then)."""
        verb = METHODS.get(method)
        if verb is None:
            self.audit.record("deny", None, str(method), uri, ip, None, "unsupported HTTP method")
            return False
        try:
            claims = self.verifier.verify(bearer_token(headers.get("authorization"))).claims
        except VerificationError as exc:
            self.audit.record("deny", None, verb, uri, ip, None, exc.reason)
            return False
        verdict = decide(claims, verb, uri, get)
        if not verdict.allow:
            self.audit.record("deny", claims, verb, uri, ip, verdict.permission, verdict.reason)
            return False
        permission = verdict.permission or ""
        target = scopes.target_of(uri, get)
        scoped = scopes.is_scoped(claims)
        studies: list[scopes.StudyInfo] | None = None
        if target is not None and (scoped or permission in RESOLVE_FIRST):
            studies = self.resolver.studies(target)
            if scoped:
                reason = self._out_of_scope(claims, studies)
                if reason:
                    self.audit.record("deny", claims, verb, uri, ip, permission, reason, target, studies)
                    return False
        elif target is None and scoped and permission not in SCOPE_FREE:
            self.audit.record("deny", claims, verb, uri, ip, permission, SCOPED_LIST_REASON)
            return False
        if permission in ACCESS_EVENTS:
            self.audit.record("allow", claims, verb, uri, ip, permission, verdict.reason, target, studies)
        return True

    @staticmethod
    def _out_of_scope(claims: Mapping[str, Any], studies: list[scopes.StudyInfo]) -> str | None:
        if not studies:
            return "study not found: cannot check the token's scope"
        for study in studies:
            ok, why = scopes.allowed(claims, study)
            if not ok:
                return why
        return None
