"""The PACS token service: turn a Keycloak login into a PACS token, and manage what it issued.

Framework-free: the Flask blueprint (:mod:`bridge.web.tokens`) and Authlib's endpoint classes
(:mod:`bridge.tokens.oauth`) call into this.  One rule set per token kind: Keycloak access
tokens are checked here (:class:`KeycloakTokenValidator`), PACS tokens by the very verifier the
PACS uses (:mod:`bridge.core.verifier`), fed with the key ring's own JWKS.

Errors never say whether a user exists: a subject token that is invalid, logged out, for an
unknown user or for a user without any PACS role gets the same ``invalid_grant`` answer (the
audit trail records which); only the missing second factor gets its own (RFC 9470) answer,
because the client must act on it.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from bridge.core import grants as grants_mod
from bridge.core import mfa
from bridge.core.audit_codes import AuditEventType
from bridge.core.errors import VerificationError
from bridge.core.jwks import Fetch, JwksCache
from bridge.core.jws import check_claims, check_signature, parse_jws, token_digest
from bridge.core.verified_cache import VerifiedCache, VerifiedToken
from bridge.core.verifier import Verifier, VerifierConfig
from bridge.errors import www_authenticate
from bridge.oidc.session import SessionEnds
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import Grant, Subject, TokenSettings
from bridge.tokens.keys import KeyRing
from bridge.tokens.store import AssignmentSource, RevocationStore, revoked_by_subject

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
DIRECTORY_ID_CLAIMS = claims_mod.DIRECTORY_ID_CLAIMS
#: ``Grant.source`` of a directory account without any assignment row (no fallback)
NO_ASSIGNMENT = "no-assignment"

AuditSink = Callable[[AuditEventType, Mapping[str, Any]], None]


#: a source of per-subject grants beyond the roles (shares, break-glass): subject -> its live grants
GrantSource = Callable[[Subject], Iterable[grants_mod.Grant]]


def step_up_challenge(rule: mfa.MfaRule) -> str:
    """RFC 9470 ``WWW-Authenticate`` of an exchange refused for lack of a (recent) second factor:
    the ``acr_values`` and ``max_age`` the client must ask Keycloak for."""
    return www_authenticate(error=mfa.INSUFFICIENT_USER_AUTHENTICATION,
                            error_description="a multi-factor login is required",
                            acr_values=rule.required_acr or None, max_age=rule.max_auth_age_seconds)


class TokenServiceError(Exception):
    """An OAuth error for the client: ``error`` code, HTTP status, optional WWW-Authenticate."""

    def __init__(self, error: str, description: str, status: int = 400, www_authenticate: str | None = None,
                 retry_after: int | None = None):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.www_authenticate = www_authenticate
        self.retry_after = retry_after


class KeycloakUnavailable(Exception):
    """Keycloak's keys are needed and Keycloak cannot be reached: a 503 for the client, not a verdict
    on its token (``invalid_grant`` would tell a viewer to log in again, which cannot help)."""

    def __init__(self, retry_after: int):
        super().__init__("Keycloak is unreachable")
        self.retry_after = retry_after


def https_fetch(ca_file: str | None, timeout: float = 5.0) -> Fetch:
    """GET/POST over HTTPS verified against ``ca_file`` (the system store when None)."""
    context = ssl.create_default_context(cafile=ca_file)

    def fetch(url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        req = urllib.request.Request(url, data=body, headers=dict(headers))  # noqa: S310 - https only
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            return bytes(resp.read(2_000_000))

    return fetch


# --------------------------------------------------------------------------- Keycloak tokens


@dataclass(frozen=True)
class KeycloakSettings:
    issuer: str  # https://kc/realms/hospital
    audience: str  # the bridge's client id: the subject token must be meant for the bridge
    allowed_clients: frozenset[str]  # azp of viewers whose tokens may be exchanged
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    leeway_seconds: int = 30

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/protocol/openid-connect/certs"


_NEVER = float("inf")  # Keycloak tokens are never introspected
#: what a Keycloak access token must carry (PyJWT's ``require`` list before, same rule)
KEYCLOAK_REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
#: verified Keycloak tokens kept (each at most until its ``exp``); a viewer re-exchanges the
#: same Keycloak token for every PACS token it needs, so hits are the common case
KEYCLOAK_CACHE_SIZE = 10_000


class KeycloakTokenValidator:
    """Checks a Keycloak access token: signature (realm JWKS), ``iss``, ``aud``, ``exp``, ``azp``, ``typ``.

    Same verification core as the PACS verifier (:mod:`bridge.core.verifier`: strict parse,
    pinned algorithm equal to the key's, PyJWT's algorithm objects for the signature).  A token
    whose signature was checked is cached by hash until its ``exp``; every call, hit or not,
    re-checks ``iss``, ``aud``, the times, ``typ`` and ``azp`` on the claims (and the caller
    applies the MFA rule), so a hit skips only the RSA/ECDSA check and the parse.
    """

    def __init__(
        self,
        settings: KeycloakSettings,
        fetch: Fetch,
        clock: Callable[[], float] = time.time,
        cache_size: int = KEYCLOAK_CACHE_SIZE,
    ):
        self.settings = settings
        self.clock = clock
        #: whether the last JWKS fetch failed (Keycloak down, or answering something that is no JWKS)
        self.unreachable = False
        self.keys = JwksCache(settings.jwks_url, self._fetch_jwks(fetch), settings.algorithms,
                              min_refresh_seconds=10, clock=clock)
        self.cache = VerifiedCache(cache_size, settings.leeway_seconds)

    def _fetch_jwks(self, fetch: Fetch) -> Fetch:
        """``fetch`` that records whether Keycloak answered with a key set (see :attr:`unreachable`)."""

        def recording(url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
            try:
                data = fetch(url, body, headers)
                if not isinstance(json.loads(data).get("keys"), list):
                    raise ValueError("not a JWKS")
            except Exception:
                self.unreachable = True
                raise
            self.unreachable = False
            return data

        return recording

    def validate(self, token: str) -> dict[str, Any]:
        s = self.settings
        now = self.clock()
        digest = token_digest(token)
        hit = self.cache.get(digest, now)
        try:
            if hit is not None:
                claims = hit.claims
            else:
                header, claims, signing_input, signature = parse_jws(token)
                try:
                    check_signature(header, signing_input, signature, self.keys, s.algorithms)
                except VerificationError:
                    # a kid we could not look up because Keycloak is down says nothing about the token
                    if self.unreachable and header.get("kid") not in self.keys._keys:
                        wait = self.keys.min_refresh_seconds - (self.clock() - self.keys._attempt_at)
                        raise KeycloakUnavailable(max(1, int(wait + 0.999))) from None
                    raise
            check_claims(claims, s.issuer, s.audience, s.leeway_seconds, now, KEYCLOAK_REQUIRED_CLAIMS)
        except VerificationError as exc:
            raise VerificationError(f"subject token: {exc.reason}") from None
        if claims.get("typ") not in (None, "Bearer"):  # Keycloak: ID tokens say "ID", refresh "Refresh"
            raise VerificationError("subject token: not an access token")
        if claims.get("azp") not in s.allowed_clients:
            raise VerificationError("subject token: issued to a client that may not exchange")
        if hit is None:
            self.cache.put(digest, VerifiedToken(claims, str(claims.get("jti", "")), float(claims["exp"]), _NEVER), now)
        return claims


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    claims: dict[str, Any]

    @property
    def expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])


@dataclass(frozen=True)
class ExchangeRequest:
    """A checked exchange request: who, what they may do, why."""

    subject: Subject
    grant: Grant
    purpose_of_use: str


@dataclass
class TokenService:
    ring: KeyRing
    settings: TokenSettings
    mfa_rule: mfa.MfaRule
    keycloak: KeycloakTokenValidator | None
    assignments: AssignmentSource
    revocations: RevocationStore
    role_permissions: Mapping[str, Any]
    #: role -> its scope in the policy (``{"departments": [...], ...}``): what the Keycloak-role
    #: fallback of a local account applies (assignment rows carry their own scopes)
    role_scopes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    audit: AuditSink = field(default=lambda event, details: None)
    #: ended Keycloak sessions (shared by every worker); None: only watermarks are checked
    ended_sessions: SessionEnds | None = None
    #: wraps the issue-time reads of one exchange (the app: one database connection for all of them)
    read_scope: Callable[[], AbstractContextManager[None]] = nullcontext
    #: grants beyond the roles -- internal shares, break-glass -- each source read at every issue
    #: like the assignments (a revoked share must not reach the next token); their grants carry
    #: their own ``exp``.  One mechanism: they are core grants of another ``kind``.
    extra_grants: Sequence[GrantSource] = ()
    _verifier: Verifier | None = None

    # ---- who and what

    @staticmethod
    def subject_from_keycloak(kc: Mapping[str, Any]) -> Subject:
        """See :func:`bridge.tokens.claims.subject_from_keycloak` (kept for callers of the service)."""
        return claims_mod.subject_from_keycloak(kc)[0]

    def grant_for(self, subject: Subject, keycloak_claims: Mapping[str, Any] | None = None) -> Grant:
        """What ``subject`` may do, read from the assignment store now (the sync writes it).

        Read at every issue, never cached and never taken from a copy made at login: a role the
        sync removed must not reach the next token.  A directory account (the token carries its
        directory id) gets exactly its assignment rows, one grant per row with the row's scope --
        none means no PACS access, never Keycloak's realm roles.  Only a local Keycloak account
        (break-glass admin, no directory id) falls back to the realm roles of ``keycloak_claims``,
        which must then be a token validated just now; each gets the scope the policy gives that
        role (:attr:`role_scopes`), so a fallback is never wider than the policy.  Then the grants
        of :attr:`extra_grants` (shares, break-glass), also read now, each its own grant.
        """
        roles = self._role_grant(subject, keycloak_claims)
        extra = tuple(g for source in self.extra_grants for g in source(subject))
        if not extra:
            return roles
        return Grant(roles.roles, roles.grants + tuple(g for g in extra if g not in roles.grants), roles.source)

    def _role_grant(self, subject: Subject, keycloak_claims: Mapping[str, Any] | None) -> Grant:
        local = keycloak_claims is not None and claims_mod.subject_from_keycloak(keycloak_claims)[1] is not None
        # by username only for a local account: a username can be reused by another person later,
        # the directory id cannot (the sync keys assignments by it)
        rows = self.assignments.assignments(subject.id, subject.username if local else None)
        if rows:
            return claims_mod.grant_from_roles(
                [(r.role, r.scopes) for r in rows], self.role_permissions, source="assignments"
            )
        if not local:
            return Grant(source=NO_ASSIGNMENT)
        realm_roles = ((keycloak_claims or {}).get("realm_access") or {}).get("roles") or []
        return claims_mod.grant_from_roles(
            [(r, self.role_scopes.get(r)) for r in realm_roles if isinstance(r, str)], self.role_permissions,
            source="keycloak-roles",
        )

    def denial_reason(self, grant: Grant) -> str:
        """The audit trail's words for an empty grant."""
        if grant.source == NO_ASSIGNMENT:
            return "no PACS role assignment for this directory account (Keycloak realm roles are not used)"
        return "no PACS role"

    def logged_out(self, kc: Mapping[str, Any], subject: Subject) -> str | None:
        """Why a (valid) Keycloak token may no longer be used, or None.

        A logout ends the Keycloak session but not the access tokens it already issued (they live
        until ``exp``); the bridge therefore refuses a token whose ``iat`` is at or before the
        subject's revocation watermark (raised by RP-initiated and back-channel logout, a leaver
        and any role removal by the sync), or whose ``sid`` names an ended session.  Both are
        read from the database now, so a logout handled by another worker counts at once.
        """
        iat = kc.get("iat")
        mark = self.revocations.watermark((subject.id, str(kc.get("sub") or "")))
        if mark is not None and (not isinstance(iat, int | float) or iat <= mark):
            return "subject token issued before the subject's logout or access change (revocation watermark)"
        sid = kc.get("sid")
        if self.ended_sessions is not None and isinstance(sid, str) and self.ended_sessions.ended(sid):
            return "subject token's Keycloak session was ended by logout"
        return None

    # ---- issuing

    def issue(
        self,
        subject: Subject,
        grant: Grant,
        client_id: str,
        *,
        requested_lifetime: int | None = None,
        purpose_of_use: str = claims_mod.DEFAULT_PURPOSE_OF_USE,
        event: AuditEventType = AuditEventType.TOKEN_ISSUED,
    ) -> IssuedToken:
        """Sign a PACS token and audit it (the MFA rule must already hold: callers check it)."""
        body = claims_mod.build(
            self.settings,
            subject,
            grant,
            client_id,
            requested_lifetime=requested_lifetime,
            purpose_of_use=purpose_of_use,
        )
        issued = IssuedToken(self.ring.sign(body), body)
        self.audit(
            event,
            {
                "client_id": client_id,
                "subject": subject.id,
                "username": subject.username,
                "jti": body["jti"],
                "roles": list(grant.roles),
                "grants": [g.describe() for g in grant.grants],
                "source": grant.source,
            },
        )
        return issued

    def prepare_exchange(
        self,
        subject_token: str,
        subject_token_type: str | None,
        client_id: str,
        *,
        scope: str | None = None,
        audience: str | None = None,
        purpose_of_use: str | None = None,
    ) -> ExchangeRequest:
        """RFC 8693 checks: the Keycloak token is valid, from an MFA login, for someone with a PACS role."""
        if subject_token_type not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise TokenServiceError("invalid_request", "subject_token_type must be an access token")
        if audience not in (None, "", self.settings.audience):
            raise TokenServiceError("invalid_target", "unknown audience")
        purpose = purpose_of_use or claims_mod.DEFAULT_PURPOSE_OF_USE
        if purpose not in claims_mod.PURPOSES_OF_USE and purpose != claims_mod.BREAK_GLASS_PURPOSE:
            raise TokenServiceError("invalid_request", "purpose_of_use not allowed")
        if self.keycloak is None:
            raise TokenServiceError("server_error", "token exchange is not configured", 500)
        try:
            kc = self.keycloak.validate(subject_token)
        except KeycloakUnavailable as exc:
            raise TokenServiceError("temporarily_unavailable", "the identity provider is unreachable; retry later",
                                    503, retry_after=exc.retry_after) from None
        except VerificationError as exc:
            self.audit(AuditEventType.ACCESS_DENIED, {"client_id": client_id, "reason": exc.reason})
            raise TokenServiceError("invalid_grant", "subject token is not acceptable") from None
        subject = self.subject_from_keycloak(kc)
        with self.read_scope():
            return self._checked_exchange(kc, subject, client_id, scope, purpose)

    def _checked_exchange(
        self, kc: Mapping[str, Any], subject: Subject, client_id: str, scope: str | None, purpose: str
    ) -> ExchangeRequest:
        """The checks of :meth:`prepare_exchange` that read the store (logout state, MFA, the grant)."""
        why = self.logged_out(kc, subject)
        if why is not None:
            self.audit(
                AuditEventType.ACCESS_DENIED,
                {"client_id": client_id, "subject": subject.id, "username": subject.username, "reason": why},
            )
            raise TokenServiceError("invalid_grant", "subject token is not acceptable")
        verdict = mfa.check(kc, self.mfa_rule)
        if not verdict.ok:
            self.audit(
                AuditEventType.MFA_FAILURE,
                {"client_id": client_id, "subject": subject.id, "username": subject.username, "reason": verdict.reason},
            )
            raise TokenServiceError(
                mfa.INSUFFICIENT_USER_AUTHENTICATION,
                "a multi-factor login is required for PACS access",
                401,
                step_up_challenge(self.mfa_rule),
            )
        grant = self.grant_for(subject, kc).narrowed(scope)
        if not grant.permissions:
            self.audit(
                AuditEventType.ACCESS_DENIED,
                {"client_id": client_id, "subject": subject.id, "username": subject.username,
                 "reason": self.denial_reason(grant)},
            )
            raise TokenServiceError("invalid_grant", "subject token is not acceptable")
        if purpose == claims_mod.BREAK_GLASS_PURPOSE and not claims_mod.has_break_glass(grant.grants):
            self.audit(
                AuditEventType.ACCESS_DENIED,
                {"client_id": client_id, "subject": subject.id, "username": subject.username,
                 "reason": "purpose_of_use BTG without a live break-glass grant"},
            )
            raise TokenServiceError("invalid_request",
                                    "purpose_of_use BTG needs a break-glass grant (POST /break-glass)")
        return ExchangeRequest(subject, grant, purpose)

    # ---- our own tokens

    @property
    def verifier(self) -> Verifier:
        """The PACS verifier over the ring's JWKS (no HTTP): the same rules the PACS applies."""
        if self._verifier is None:
            cfg = VerifierConfig(
                issuer=self.settings.issuer,
                audience=self.settings.audience,
                jwks_url="https://local.invalid/jwks.json",
                mfa_rule=self.mfa_rule,
                jwks_min_refresh_seconds=1.0,
                jwks_max_age_seconds=30.0,
            )
            self._verifier = Verifier(cfg, fetch=lambda url, body, headers: json.dumps(self.ring.jwks()).encode())
        return self._verifier

    def verify_own(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid, unrevoked PACS token of ours, else None."""
        try:
            claims = self.verifier.verify(token).claims
        except VerificationError:
            return None
        return None if self.is_revoked(claims) else claims

    def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        """Revoked by ``jti`` (RFC 7009) or by the subject's watermark (logout)."""
        return self.revocations.is_revoked(str(claims["jti"])) or revoked_by_subject(self.revocations, claims)

    def revoke(self, claims: Mapping[str, Any], by_client: str) -> None:
        self.revocations.revoke(str(claims["jti"]), int(claims["exp"]))
        self.audit(
            AuditEventType.TOKEN_REVOKED, {"client_id": by_client, "subject": claims.get("sub"), "jti": claims["jti"]}
        )

    def revoke_subject(self, subject: str, reason: str, by_client: str | None = None) -> None:
        """Revoke every PACS token of ``subject`` issued so far (logout, account disabled)."""
        now = int(time.time())
        self.revocations.revoke_subject(subject, now, now + self.settings.max_lifetime_seconds)
        self.audit(
            AuditEventType.TOKEN_REVOKED,
            {"client_id": by_client, "subject": subject, "jti": None, "reason": reason},
        )

    def revocation_list(self) -> dict[str, Any]:
        """What verifiers pull: every revoked jti whose token has not expired yet, and the subject
        watermarks (a token whose ``sub`` is listed and whose ``iat`` <= ``not_before`` is revoked)."""
        return {
            "issuer": self.settings.issuer,
            "generated_at": int(time.time()),
            "revoked": [{"jti": j, "exp": e} for j, e in self.revocations.active()],
            "subjects": [
                {"sub": sub, "not_before": nb, "exp": ex} for sub, (nb, ex) in self.revocations.subjects().items()
            ],
        }
