"""The OAuth side of the token service, built on Authlib's own pieces.

* RFC 8693 token exchange: an Authlib grant (:class:`TokenExchangeGrant`); Authlib has no
  exchange grant of its own, only the grant machinery (client authentication, error bodies).
* RFC 9068 tokens: Authlib's :class:`JWTBearerTokenGenerator`, with the claims from
  :mod:`bridge.tokens.claims` and the signature from the key ring.  Authlib's own
  ``access_token_generator`` re-imports the JWK with joserfc on every token; the key ring signs
  with a pre-parsed key (PyJWT), which matters on the hot path.
* RFC 7662 introspection and RFC 7009 revocation: Authlib's endpoints; token lookup is the PACS
  verifier (same rules as the PACS) plus the revocation store.
* RFC 8414 metadata: Authlib's :class:`AuthorizationServerMetadata` validates what we publish.

Framework-free; :mod:`bridge.web.tokens` plugs these into Flask.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator

from bridge.core import routes
from bridge.core.audit_codes import AuditEventType
from bridge.tokens import claims as claims_mod
from bridge.tokens.service import ACCESS_TOKEN_TYPE, ExchangeRequest, TokenService, TokenServiceError

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


class BridgeClient(ClientMixin):
    """A configured client (``tokens.clients``).  Without a secret it is public: exchange only."""

    def __init__(self, client_id: str, secret: str | None, may_introspect: bool = False, may_revoke_any: bool = False):
        self.client_id = client_id
        self._secret = secret
        self.may_introspect = may_introspect and secret is not None
        self.may_revoke_any = may_revoke_any and secret is not None

    @property
    def public(self) -> bool:
        return self._secret is None

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_client_secret(self, client_secret: str) -> bool:
        return self._secret is not None and hmac.compare_digest(self._secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            return method == "none" and endpoint in ("token", "revocation")
        return method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == TOKEN_EXCHANGE


class OAuthError(OAuth2Error):
    """A :class:`TokenServiceError` in Authlib's error shape (RFC 6749 section 5.2 body)."""

    def __init__(self, exc: TokenServiceError):
        super().__init__(description=exc.description, status_code=exc.status)
        self.error = exc.error
        self._www = exc.www_authenticate
        self._retry_after = exc.retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        headers = list(super().get_headers())
        if self._www:
            headers.append(("WWW-Authenticate", self._www))
        if self._retry_after is not None:
            headers.append(("Retry-After", str(self._retry_after)))
        return headers


class PacsTokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 access tokens whose claims come from :mod:`bridge.tokens.claims`."""

    def __init__(self, service: TokenService):
        super().__init__(
            issuer=service.settings.issuer,
            alg=service.ring.algorithm,
            expires_generator=lambda client, grant_type: claims_mod.lifetime(service.settings),
        )
        self.service = service

    def access_token_generator(self, client: BridgeClient, grant_type: str, user: ExchangeRequest, scope: str) -> str:
        issued = self.service.issue(
            user.subject,
            user.grant,
            client.get_client_id(),
            purpose_of_use=user.purpose_of_use,
            event=AuditEventType.TOKEN_EXCHANGED,
        )
        return issued.access_token


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    """RFC 8693 section 2: ``subject_token`` = a Keycloak access token; answer = a PACS token."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("this client may not exchange tokens")
        form = self.request.form
        if not form.get("subject_token"):
            raise InvalidRequestError("subject_token is required")
        if form.get("requested_token_type") not in (None, "", ACCESS_TOKEN_TYPE):
            raise InvalidRequestError("only access tokens can be issued")
        if form.get("actor_token"):
            raise InvalidRequestError("delegation (actor_token) is not supported")
        service: TokenService = self.server.token_service
        try:
            self.request.user = service.prepare_exchange(
                form["subject_token"],
                form.get("subject_token_type"),
                client.get_client_id(),
                scope=form.get("scope"),
                audience=form.get("audience") or form.get("resource"),
                purpose_of_use=form.get("purpose_of_use"),
            )
        except TokenServiceError as exc:
            raise OAuthError(exc) from None
        self.request.client = client

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        user: ExchangeRequest = self.request.user
        scope = " ".join(claims_mod.scope_for(p) for p in sorted(user.grant.permissions))
        token = self.generate_token(user=user, scope=scope, include_refresh_token=False)
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, token, self.TOKEN_RESPONSE_HEADER


class PacsToken(TokenMixin):
    """A verified PACS token as Authlib's endpoints see it."""

    def __init__(self, claims: dict[str, Any]):
        self.claims = claims

    def check_client(self, client: BridgeClient) -> bool:
        return client.get_client_id() == self.claims.get("client_id") or client.may_revoke_any

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])

    def is_expired(self) -> bool:
        return int(self.claims["exp"]) <= time.time()

    def is_revoked(self) -> bool:
        return False  # revoked tokens are never found (query_token)


class PacsIntrospectionEndpoint(IntrospectionEndpoint):
    """RFC 7662 for PACS tokens; only confidential clients with ``may_introspect``."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
    SUPPORTED_TOKEN_TYPES = ("access_token",)

    def __init__(self, server: Any, service: TokenService):
        super().__init__(server)
        self.service = service

    def query_token(self, token_string: str, token_type_hint: str | None) -> PacsToken | None:
        claims = self.service.verify_own(token_string)
        return PacsToken(claims) if claims else None

    def check_permission(self, token: PacsToken, client: BridgeClient, request: Any) -> bool:
        return client.may_introspect

    def introspect_token(self, token: PacsToken) -> dict[str, Any]:
        c = token.claims
        keep = (
            "scope",
            "client_id",
            "sub",
            "aud",
            "iss",
            "exp",
            "iat",
            "nbf",
            "jti",
            "auth_time",
            "acr",
            "amr",
            "roles",
            "permissions",
            "grants",
            "preferred_username",
            "pacs_bridge_token_format",  # how to read the grants (bridge.core.token_format)
        )
        return {"active": True, "token_type": "Bearer", **{k: c[k] for k in keep if k in c}}


class PacsRevocationEndpoint(RevocationEndpoint):
    """RFC 7009: 200 whether or not the token was known (no oracle)."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    SUPPORTED_TOKEN_TYPES = ("access_token", "refresh_token")

    def __init__(self, server: Any, service: TokenService):
        super().__init__(server)
        self.service = service

    def query_token(self, token_string: str, token_type_hint: str | None) -> PacsToken | None:
        claims = self.service.verify_own(token_string)
        return PacsToken(claims) if claims else None

    def authenticate_token(self, request: Any, client: BridgeClient) -> PacsToken | None:
        try:
            return super().authenticate_token(request, client)  # type: ignore[no-any-return]
        except InvalidGrantError:
            return None  # another client's token: refuse silently, do not reveal it exists

    def revoke_token(self, token: PacsToken, request: Any) -> None:
        self.service.revoke(token.claims, by_client=request.client.get_client_id() if request.client else "")


def metadata(service: TokenService, base_url: str) -> dict[str, Any]:
    """RFC 8414 authorization server metadata (validated by Authlib before it is served)."""
    md = AuthorizationServerMetadata(
        {
            "issuer": service.settings.issuer,
            "token_endpoint": base_url + "/token",
            "jwks_uri": base_url + "/jwks.json",
            "introspection_endpoint": base_url + "/introspect",
            "revocation_endpoint": base_url + "/revoke",
            "response_types_supported": ["none"],  # no authorization endpoint (yet): exchange only
            "grant_types_supported": [TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "scopes_supported": claims_mod.scopes_supported(),
            "access_token_format": ["jwt"],
            "access_token_signing_alg_values_supported": [service.ring.algorithm],
            "revocation_list_endpoint": base_url + "/revocations",
            "pacs_audience": service.settings.audience,
            "pacs_routes": routes.table(),
        }
    )
    md.validate()
    return dict(md)
