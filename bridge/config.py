"""The bridge's configuration: one YAML file, environment overrides, secrets from files.

Why pydantic-settings: it validates the whole tree in one pass and reports *every* error with
its location, which is what `pacs-bridge check-config` promises an IT engineer.

Precedence (highest first): environment variables ``PACS_BRIDGE_<SECTION>__<KEY>``, then the
YAML file, then the defaults below.  A secret ``foo`` may instead be given as ``foo_file``: the
path of a file that holds it, so that no secret has to sit in the YAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.core.transport import url_problem
from bridge.errors import InputError

ENV_PREFIX = "PACS_BRIDGE_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(InputError):
    """Raised with the full list of problems, each as ``(key.path, reason)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} error(s)"] + [f"  {k}: {r}" for k, r in problems]
        super().__init__("\n".join(lines), subject=source)


class _Section(BaseModel):
    """Base of every section: unknown keys are errors (a typo must not silently fall back to a default),
    and any ``SecretStr`` field ``x`` may be given as ``x_file`` instead."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field in cls.model_fields.items():
            key = f"{name}_file"
            if key not in data or field.annotation not in (SecretStr, SecretStr | None):
                continue
            path = data.pop(key)
            if path in (None, ""):
                continue
            if name in data and data[name] not in (None, ""):
                data[name] = _Unreadable(f"both {name} and {key} are set; keep only one")
                continue
            try:
                data[name] = Path(str(path)).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                data[name] = _Unreadable(f"cannot read secret file {path!s} ({key}): {exc.strerror}")
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _report_unreadable(cls, v: Any) -> Any:
        if isinstance(v, _Unreadable):
            raise ValueError(v.reason)
        return v


class _Unreadable:
    """Stands in for a secret whose file could not be read, so the error lands on that key
    while every other key of the section is still validated."""

    def __init__(self, reason: str):
        self.reason = reason


def _require_scheme(value: str, schemes: tuple[str, ...], what: str) -> str:
    if not value.startswith(schemes):
        raise ValueError(f"must start with {' or '.join(schemes)} ({what})")
    return value.rstrip("/")


#: the reason printed by every plaintext refusal: where to opt out, and that it is per section
_OPT_OUT = "or set allow_plaintext: true in this section explicitly (check-config then warns)"


def check_client_url(value: str, *, key: str, tls: str, plain: str | None = None,
                     allow_plaintext: bool = False, carries: str = "credentials and patient data") -> str:
    """A client URL of the bridge, encrypted unless its section opts out (issue 12: every hop TLS).

    ``tls`` / ``plain`` are the schemes (``"https"`` / ``"http"``, ``"rediss"`` / ``"redis"``);
    with ``allow_plaintext`` the plain scheme is accepted too.  Raises ValueError whose message
    starts with ``key:`` (lifted into the key path by :func:`load_config`).  Sections call it from
    an ``after`` model validator, so ``allow_plaintext`` is known whatever the key order; a new
    section (the browser gateway's Orthanc URL) calls it the same way.  Returns the URL without a
    trailing slash."""
    schemes = (tls, plain) if plain and allow_plaintext else (tls,)
    problem = url_problem(value, schemes)
    if problem is None:
        return value.rstrip("/")
    if plain and not allow_plaintext and url_problem(value, (plain,)) is None:
        raise ValueError(f"{key}: {plain}:// sends {carries} in clear; use {tls}://, {_OPT_OUT}")
    raise ValueError(f"{key}: {problem}")


class BridgeSection(_Section):
    """The bridge's own HTTP service."""

    public_url: str = "https://127.0.0.1:9443"
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(9443, ge=1, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    session_secret: SecretStr | None = None
    session_idle_minutes: int = Field(15, ge=1, le=24 * 60)
    session_absolute_hours: int = Field(12, ge=1, le=24 * 7)
    viewer_redirect_uris: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _https(self) -> BridgeSection:
        # no opt-out: the bridge issues tokens; TLS is mandatory
        self.public_url = check_client_url(self.public_url, key="public_url", tls="https")
        return self


class KeycloakSection(_Section):
    """Where Keycloak is, and the bridge's two identities in it (OIDC client, admin API client)."""

    url: str = "https://127.0.0.1:8443"
    realm: str = "hospital"
    client_id: str = "pacs-bridge"
    client_secret: SecretStr | None = None
    admin_realm: str = "master"
    admin_username: str = "admin"
    admin_password: SecretStr | None = None
    ca_file: Path | None = None
    pacs_client_id: str = "pacs"
    #: accept an http:// url (a lab only; check-config warns)
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _https(self) -> KeycloakSection:
        self.url = check_client_url(self.url, key="url", tls="https", plain="http",
                                    allow_plaintext=self.allow_plaintext, carries="passwords and tokens")
        return self

    @field_validator("realm", "client_id")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class DirectorySection(_Section):
    """The hospital directory the bridge reads (Active Directory or OpenLDAP)."""

    kind: Literal["ad", "openldap"] = "ad"
    url: str = "ldaps://127.0.0.1:636"
    start_tls: bool = False
    allow_plaintext: bool = False
    bind_dn: str = ""
    bind_password: SecretStr | None = None
    base_dn: str = "DC=hospital,DC=test"
    users_dn: str | None = None
    groups_dn: str | None = None
    ca_file: Path | None = None
    disabled_attribute: str = "pwdAccountLockedTime"
    page_size: int = Field(500, ge=1, le=1000)
    timeout_seconds: int = Field(30, ge=1, le=600)

    @field_validator("url")
    @classmethod
    def _ldap(cls, v: str) -> str:
        problem = url_problem(v, ("ldap", "ldaps"))
        if problem:
            raise ValueError(problem)
        return v.rstrip("/")

    @model_validator(mode="after")
    def _tls_unless_explicit(self) -> DirectorySection:
        # ldap:// + StartTLS is encrypted too (the connection fails if StartTLS does)
        if self.url.startswith("ldap://") and not self.start_tls and not self.allow_plaintext:
            raise ValueError(
                "url: ldap:// without start_tls sends the bind password in clear; "
                "use ldaps://, set start_tls: true, or set allow_plaintext: true explicitly"
            )
        return self


#: DICOM AE title: 1-16 characters of the default repertoire, no backslash (PS3.5 6.2, AE VR)
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
DICOM_OPERATIONS = ("echo", "find", "get", "move", "store")


class ModalitySection(_Section):
    """One DICOM peer allowed on the PACS's DICOM port: only this AE title, from this host."""

    aet: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: what the peer may ask the PACS for (C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE)
    allow: list[Literal["echo", "find", "get", "move", "store"]] = Field(
        default_factory=lambda: list(DICOM_OPERATIONS)
    )

    @field_validator("aet")
    @classmethod
    def _aet(cls, v: str) -> str:
        if not _AET.match(v) or not v.strip() or v != v.strip():
            raise ValueError(
                f"{v!r} is not a DICOM AE title (1-16 printable ASCII characters, no backslash, "
                "no leading/trailing spaces)"
            )
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v) or "/" in v:
            raise ValueError(f"{v!r} is not a host name or IP address")
        return v


class PacsSection(_Section):
    """The PACS the tokens are for, and the DICOM peers its DICOM port admits."""

    audience: str = "pacs"
    orthanc_url: str | None = None
    #: CA that signed Orthanc's HTTPS certificate (None: the system store)
    ca_file: Path | None = None
    #: accept an http:// orthanc_url (a lab only; check-config warns)
    allow_plaintext: bool = False
    #: symbolic name -> modality; every other AE title is refused (no DicomAlwaysAllow*)
    modalities: dict[str, ModalitySection] = Field(default_factory=dict)

    @field_validator("modalities")
    @classmethod
    def _unique_aets(cls, v: dict[str, ModalitySection]) -> dict[str, ModalitySection]:
        seen: dict[str, str] = {}
        for name, modality in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"{name}: modality names may use letters, digits, _ and - only")
            key = modality.aet.upper()  # Orthanc compares AE titles case-insensitively by default
            if key in seen:
                raise ValueError(f"{name}: AE title {modality.aet!r} is also used by {seen[key]}")
            seen[key] = name
        return v

    @model_validator(mode="after")
    def _https(self) -> PacsSection:
        if self.orthanc_url is not None:
            self.orthanc_url = check_client_url(self.orthanc_url, key="orthanc_url", tls="https", plain="http",
                                                allow_plaintext=self.allow_plaintext)
        return self


class TokenClientSection(_Section):
    """A client of the bridge's token endpoints (a viewer, a PACS gateway, the bridge's own tools).

    Without ``client_secret`` the client is public: it may only exchange tokens (a browser viewer
    cannot keep a secret); introspection and revoking other clients' tokens need a secret."""

    client_id: str
    client_secret: SecretStr | None = None
    may_introspect: bool = False
    may_revoke_any: bool = False

    @field_validator("client_id")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class TokensSection(_Section):
    """PACS token service (RFC 9068 access tokens)."""

    algorithm: Literal["ES256", "RS256", "EdDSA"] = "ES256"
    lifetime_seconds: int = Field(300, ge=10)
    max_lifetime_seconds: int = Field(3600, ge=20)
    key_encryption_key: SecretStr | None = None
    #: during a KEK rotation only: the KEK being replaced, which still opens what it wrapped
    #: (`pacs-bridge keys rewrap` then re-wraps everything under key_encryption_key)
    previous_key_encryption_key: SecretStr | None = None
    #: ``iss`` of PACS tokens; default: bridge.public_url
    issuer: str | None = None
    clients: list[TokenClientSection] = Field(default_factory=list)
    #: the ``aud`` a Keycloak token must carry to be exchanged; default: keycloak.client_id
    subject_token_audience: str | None = None
    #: Keycloak clients (``azp``) whose tokens may be exchanged
    subject_token_clients: list[str] = Field(default_factory=lambda: ["pacs-viewer", "pacs-bridge"])

    @model_validator(mode="after")
    def _lifetime_within_max(self) -> TokensSection:
        if self.lifetime_seconds > self.max_lifetime_seconds:
            raise ValueError(
                f"lifetime_seconds ({self.lifetime_seconds}) exceeds max_lifetime_seconds "
                f"({self.max_lifetime_seconds})"
            )
        return self


class MfaSection(_Section):
    """What counts as a multi-factor login (see docs/tokens.md)."""

    required_acr: str = "mfa"
    accepted_amr: list[str] = Field(default_factory=lambda: ["otp", "hwk", "mfa"])
    max_auth_age_seconds: int = Field(12 * 3600, ge=60)


class SyncSection(_Section):
    """The scheduled directory -> Keycloak/PACS reconciliation."""

    policy_file: Path | None = None
    interval_seconds: int = Field(60, ge=10)
    full_sync_every: int = Field(60, ge=1, description="every Nth run is a full run")
    deletion_threshold_count: int = Field(500, ge=0)
    deletion_threshold_percent: float = Field(10.0, ge=0, le=100)
    targets: list[Literal["keycloak", "scim", "store"]] = Field(default_factory=lambda: ["keycloak", "store"])
    #: Keycloak target: realm roles, or client roles of keycloak.pacs_client_id
    keycloak_roles: Literal["realm", "client"] = "realm"


class ScimSection(_Section):
    """A PACS provisioned over SCIM 2.0."""

    url: str | None = None
    bearer_token: SecretStr | None = None
    ca_file: Path | None = None
    #: accept an http:// url (a lab only; check-config warns)
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _https(self) -> ScimSection:
        if self.url is not None:
            self.url = check_client_url(self.url, key="url", tls="https", plain="http",
                                        allow_plaintext=self.allow_plaintext, carries="the bearer token and user data")
        return self


class StoreSection(_Section):
    """The bridge's database (SQLite by default, PostgreSQL by URL)."""

    url: str = "sqlite:///var/pacs-bridge.db"
    #: accept a PostgreSQL URL without ``sslmode=verify-full`` (a lab only; check-config warns)
    allow_plaintext: bool = False
    #: encrypt the SQLite file as a whole with SQLCipher under a key derived from the KEK
    #: (docs/encryption.md); PostgreSQL's data directory belongs on an encrypted volume instead
    sqlcipher: bool = False

    @field_validator("url")
    @classmethod
    def _supported(cls, v: str) -> str:
        return _require_scheme(v, ("sqlite://", "postgresql://", "postgresql+psycopg2://"), "a database URL")

    @model_validator(mode="after")
    def _sqlcipher_on_sqlite(self) -> StoreSection:
        if self.sqlcipher and not self.url.startswith("sqlite"):
            raise ValueError("sqlcipher: encrypts a SQLite file only; put PostgreSQL's data directory "
                             "on an encrypted volume instead (docs/encryption.md)")
        return self

    @model_validator(mode="after")
    def _verify_full(self) -> StoreSection:
        """PostgreSQL only over TLS with the server's name checked: libpq's default ``prefer``
        silently falls back to plain text and ``require`` accepts any certificate."""
        if not self.url.startswith("postgresql") or self.allow_plaintext:
            return self
        from urllib.parse import parse_qs, urlsplit

        modes = parse_qs(urlsplit(self.url).query, keep_blank_values=True).get("sslmode", [])
        if modes != ["verify-full"]:
            found = "absent" if not modes else ", ".join(repr(m) for m in modes)
            raise ValueError(f"url: PostgreSQL needs ?sslmode=verify-full exactly once (found {found}; "
                             f"prefer/allow/disable fall back to plain text, require/verify-ca do not "
                             f"check the server's name), {_OPT_OUT}")
        return self


class AuditSection(_Section):
    """Audit trail shipping and retention."""

    syslog_host: str | None = None
    syslog_port: int = Field(6514, ge=1, le=65535)
    syslog_ca_file: Path | None = None
    #: the bridge's client certificate and key for the collector (mutual TLS, IHE ATNA secure node);
    #: both or neither (PEM files; the key unencrypted, mode 0600)
    syslog_client_cert_file: Path | None = None
    syslog_client_key_file: Path | None = None
    spool_dir: Path = Path("var/audit-spool")
    retention_days: int = Field(6 * 365 + 2, ge=1, description="HIPAA 164.316(b)(2): six years")
    enterprise_site_id: str = "HOSPITAL"
    source_id: str = "pacs-sso-bridge"
    #: Ed25519 key signing the audit checkpoints (created on first use; see bridge/audit/keys.py)
    checkpoint_key_file: Path = Path("var/audit-checkpoint.key")
    checkpoint_every: int = Field(1000, ge=1, description="sign a checkpoint every N records")
    #: ``serve`` also signs the head this often, so quiet periods are covered (bridge/audit/jobs.py)
    checkpoint_interval_seconds: int = Field(300, ge=1)
    #: how often ``serve`` drains the syslog spool to the collector
    ship_interval_seconds: float = Field(2.0, gt=0)
    #: how often ``serve`` archives records older than ``retention_days``
    retention_check_seconds: int = Field(86400, ge=1)
    #: where expired records go (one JSONL file per archive run, with its signed checkpoint)
    archive_dir: Path = Path("var/audit-archive")
    #: bearer secret of the Orthanc plugin's ``POST /audit/events`` (None: ingest disabled)
    ingest_token: SecretStr | None = None
    #: pull Keycloak's login events (success, wrong password, wrong OTP, logout) into the trail;
    #: needs ``keycloak.admin_password`` (bridge/audit/keycloak_events.py)
    keycloak_events: bool = True
    #: how often ``serve`` pulls them (Keycloak keeps them for the realm's eventsExpiration)
    keycloak_events_interval_seconds: float = Field(30.0, gt=0)
    #: also pull Keycloak's admin events (console changes to roles, users, the realm) at the same
    #: interval; needs ``keycloak.admin_password`` (bridge/audit/keycloak_admin_events.py)
    keycloak_admin_events: bool = True

    @model_validator(mode="after")
    def _client_certificate(self) -> AuditSection:
        cert, key = self.syslog_client_cert_file, self.syslog_client_key_file
        if (cert is None) != (key is None):
            missing = "syslog_client_key_file" if key is None else "syslog_client_cert_file"
            raise ValueError(f"{missing}: needed too (the client certificate and its key go together)")
        if cert is None or key is None:
            return self
        import ssl

        for name, path in (("syslog_client_cert_file", cert), ("syslog_client_key_file", key)):
            try:
                Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"{name}: cannot read {path} ({exc.strerror})") from None
        try:
            ssl.create_default_context(ssl.Purpose.SERVER_AUTH).load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"syslog_client_key_file: {key} is not the PEM key of the certificate {cert} "
                             f"(or one of them is not PEM: {exc})") from None
        return self


#: the rate-limited endpoint groups (bridge/web/limits.py; sizing in docs/configuration.md)
RATE_LIMIT_NAMES = ("token", "introspect", "revoke", "revocations", "login", "backchannel_logout", "metrics",
                    "audit", "break_glass")


class MetricsSection(_Section):
    """``GET /metrics`` of the web app (Prometheus text, summed across the web server's workers).

    Refused (403, audited) unless the client address (after ``web.trusted_proxy_hops``) is in
    ``allow`` or the request carries ``Authorization: Bearer <bearer_token>``."""

    enabled: bool = True
    #: client networks allowed to scrape without a token; default: loopback only
    allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    #: a scraper elsewhere presents this (give it as ``bearer_token_file``)
    bearer_token: SecretStr | None = None

    @field_validator("allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        bad = []
        for item in v:
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                bad.append(f"{item!r} ({exc})")
        if bad:
            raise ValueError("not a network in CIDR notation (e.g. 10.20.0.0/16): " + "; ".join(bad))
        return v

    @field_validator("bearer_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("at least 16 characters (a guessable token would open /metrics to anyone)")
        return v


class WebSection(_Section):
    """The web app behind its web server (granian): client addresses behind a reverse proxy, shared rate limits,
    ``/metrics``.  Why each default: docs/configuration.md, section ``web``."""

    #: reverse proxies in front of the bridge that append to X-Forwarded-For (0: the header is
    #: ignored and the TCP peer is the client; set it to exactly the number of proxies you run)
    trusted_proxy_hops: int = Field(0, ge=0, le=5)
    #: where rate-limit counters live: ``memory://`` (one process), ``redis://`` / ``rediss://``
    #: (shared by every worker and instance); put the password in ``rate_limit_storage_password_file``
    rate_limit_storage_url: str = "memory://"
    rate_limit_storage_password: SecretStr | None = None
    #: CA that signed the Redis server's certificate (``rediss://``)
    rate_limit_storage_ca_file: Path | None = None
    #: per-client-address limits by endpoint group, in the ``limits`` notation ("10/second;600/minute")
    rate_limits: dict[str, str] = Field(default_factory=dict)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    #: accept a redis:// (unencrypted) rate_limit_storage_url (a lab only; check-config warns)
    allow_plaintext: bool = False

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _storage(cls, v: str) -> str:
        problem = None if v == "memory://" else url_problem(v, ("redis", "rediss"))
        if problem:
            raise ValueError(f"must be memory://, redis:// or rediss:// ({problem})")
        if "@" in v.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("no credentials in the URL (it is printed and logged); "
                             "use rate_limit_storage_password_file")
        return v

    @field_validator("rate_limits")
    @classmethod
    def _limits(cls, v: dict[str, str]) -> dict[str, str]:
        from limits import parse_many

        problems = []
        for name, text in v.items():
            if name not in RATE_LIMIT_NAMES:
                problems.append(f"{name}: unknown endpoint group (known: {', '.join(RATE_LIMIT_NAMES)})")
                continue
            try:
                parse_many(text)
            except ValueError:
                problems.append(f"{name}: {text!r} is not a limit like '10/second;600/minute'")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _tls_options_need_tls(self) -> WebSection:
        if self.rate_limit_storage_ca_file is not None and not self.rate_limit_storage_url.startswith("rediss://"):
            raise ValueError("rate_limit_storage_ca_file: only used with a rediss:// URL")
        if self.rate_limit_storage_password is not None and self.rate_limit_storage_url.startswith("memory://"):
            raise ValueError("rate_limit_storage_password: memory:// takes no password")
        if self.rate_limit_storage_url != "memory://":
            check_client_url(self.rate_limit_storage_url, key="rate_limit_storage_url", tls="rediss", plain="redis",
                             allow_plaintext=self.allow_plaintext, carries="the Redis password")
        return self


#: paths the web app serves itself: a gateway prefix must not shadow them
_RESERVED_PREFIXES = ("/login", "/logout", "/oidc", "/backchannel-logout", "/token", "/introspect", "/revoke",
                      "/revocations", "/jwks.json", "/.well-known", "/audit", "/metrics", "/readyz", "/healthz",
                      "/orthanc-auth", "/static", "/shares", "/share", "/break-glass")


class GatewaySection(_Section):
    """The browser gateway to Orthanc (backend-for-frontend, docs/gateway.md).

    Off while ``orthanc_url`` is unset.  The browser holds only an opaque session cookie; the
    PACS token, Keycloak's refresh token and the ID token stay in the bridge's database, encrypted."""

    #: where the gateway lives on the bridge's public URL (``https://<bridge>/pacs/``)
    prefix: str = "/pacs"
    #: Orthanc's internal URL (loopback or a private network); None: the gateway is off
    orthanc_url: str | None = None
    #: CA that signed Orthanc's certificate when ``orthanc_url`` is https (None: the system store)
    orthanc_ca_file: Path | None = None
    #: accept an http:// orthanc_url (a lab only; check-config warns)
    allow_plaintext: bool = False
    #: HIPAA automatic logoff: a session without a user-initiated request for this long ends
    idle_timeout_seconds: int = Field(900, ge=10, le=24 * 3600)
    #: a session ends this long after login whatever happens; at most ``keycloak_sso_max_seconds``
    absolute_lifetime_seconds: int = Field(10 * 3600, ge=60)
    #: Keycloak's "SSO Session Max" of the realm (the refresh token dies with it)
    keycloak_sso_max_seconds: int = Field(10 * 3600, ge=60)
    #: renew the PACS token when it has less than this left
    renew_margin_seconds: int = Field(60, ge=5)
    #: PostgreSQL store: each worker keeps a session this long at most in a cache that LISTEN/NOTIFY
    #: empties the moment the session ends or is renewed anywhere (0: read the row on every request)
    session_cache_seconds: float = Field(5.0, ge=0, le=60)
    #: origins of external DICOMweb viewers allowed to call ``<prefix>/dicom-web/`` with a bearer token
    viewer_origins: list[str] = Field(default_factory=list)
    #: Orthanc paths (below the prefix, e.g. ``/changes``) a page polls in the background: a GET
    #: there that is not a navigation is no user activity and does not hold the session open
    #: (``/web-viewer/is-stable-series``: the Orthanc Web Viewer asks it by itself for each series)
    background_paths: list[str] = Field(default_factory=lambda: ["/changes", "/jobs", "/system",
                                                                 "/web-viewer/is-stable-series"])
    #: upstream timeouts (connect, read) in seconds; a study archive is streamed, so read is per chunk
    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(300.0, gt=0)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9_-]+)+", v):
            raise ValueError("must look like /pacs: a path of letters, digits, _ and -, "
                             "starting with / and without a trailing /")
        for reserved in _RESERVED_PREFIXES:
            if v == reserved or v.startswith(reserved + "/"):
                raise ValueError(f"{reserved} is served by the bridge itself; choose another prefix")
        return v

    @field_validator("orthanc_url")
    @classmethod
    def _orthanc(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if not parts.hostname or parts.query or parts.fragment or parts.username:
            raise ValueError("must be scheme://host[:port][/path] without credentials, query or fragment")
        return v

    @model_validator(mode="after")
    def _https(self) -> GatewaySection:
        if self.orthanc_url is not None:
            self.orthanc_url = check_client_url(self.orthanc_url, key="orthanc_url", tls="https", plain="http",
                                                allow_plaintext=self.allow_plaintext)
        return self

    @field_validator("viewer_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?", o)]
        if bad:
            raise ValueError("an origin is https://host[:port], nothing after it (no path, no *): "
                             + ", ".join(repr(b) for b in bad))
        return v

    @field_validator("background_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", p) or "/.." in p]
        if bad:
            raise ValueError("each path starts with / (below the prefix), e.g. /changes: "
                             + ", ".join(repr(b) for b in bad))
        return v

    @model_validator(mode="after")
    def _lifetimes(self) -> GatewaySection:
        if self.absolute_lifetime_seconds > self.keycloak_sso_max_seconds:
            raise ValueError(f"absolute_lifetime_seconds: {self.absolute_lifetime_seconds} exceeds "
                             f"keycloak_sso_max_seconds ({self.keycloak_sso_max_seconds}); a session must "
                             "not outlive the Keycloak session it renews from")
        if self.idle_timeout_seconds > self.absolute_lifetime_seconds:
            raise ValueError("idle_timeout_seconds: longer than absolute_lifetime_seconds")
        return self

    @property
    def enabled(self) -> bool:
        return self.orthanc_url is not None


class BackupSection(_Section):
    """One backup the compliance report checks for freshness (the bridge does not take backups:
    the hospital's backup system does; the report shows whether its output is recent)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    #: a glob of the backup files (the newest one counts)
    path: str
    max_age_hours: float = Field(26.0, gt=0)


class ComplianceSection(_Section):
    """``compliance``: where the compliance report finds its evidence (docs/governance.md)."""

    #: where `make test` leaves the JUnit report of each release (pacs-sso-bridge-<version>.xml)
    test_report_dir: Path = Path("var/test-reports")
    backups: list[BackupSection] = Field(default_factory=list)
    #: Orthanc's configuration file, when Orthanc runs on this host: the report then checks the
    #: encrypted storage area and whether the index, temporary directory and viewer cache are on
    #: encrypted volumes (bridge/deploy/volumes.py)
    orthanc_config: Path | None = None


class SharingSection(_Section):
    """Study shares (docs/sharing.md).  The policy's ``sharing:`` section says who may share what;
    this section says where the external recipients' share endpoint lives.  The endpoint is a
    blueprint of its own under ``prefix``: a site that exposes it outside the hospital runs it on a
    listener (or host name) of its own whose reverse proxy forwards only ``<prefix>/``."""

    #: the origin external recipients are given (``https://share.hospital.example``); default:
    #: bridge.public_url.  The share token's audience is ``<public_url><prefix>``, never the PACS.
    public_url: str | None = None
    prefix: str = "/share"
    #: how long a recipient's session lasts after the passcode (never beyond the share's expiry)
    session_minutes: int = Field(30, ge=1, le=24 * 60)
    #: wrong passcodes per share and source address before that pair is locked out
    lockout_failures: int = Field(5, ge=1, le=20)
    #: processes per web worker that de-identify an export in parallel (0: in the request's thread)
    deidentify_workers: int = Field(2, ge=0, le=64)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9_-]+)+", v):
            raise ValueError("must look like /share: letters, digits, _ and -, starting with /, no trailing /")
        return v

    @model_validator(mode="after")
    def _https(self) -> SharingSection:
        if self.public_url is not None:
            self.public_url = check_client_url(self.public_url, key="public_url", tls="https")
        return self


class ReviewSection(_Section):
    """Access reviews (recertification, bridge/review/, docs/governance.md): who reviews whom is
    the policy's ``reviewers:`` section; when, how strictly and where alerts go is here."""

    #: ``serve`` starts a campaign on this crontab schedule (minute hour day month weekday, UTC);
    #: the default: 06:00 on the first of every month.  None: no scheduled review
    schedule: str | None = "0 6 1 * *"
    #: a user holding a role with no login and no PACS access for this long is flagged dormant
    dormant_days: int = Field(90, ge=1)
    #: reviewers answer within this many days; then items escalate to the privacy officer
    deadline_days: int = Field(14, ge=1)
    #: how often ``serve`` looks for items past their deadline
    escalation_check_seconds: int = Field(3600, ge=10)
    #: an escalation is POSTed here as JSON (None: no webhook); https only unless allow_plaintext
    webhook_url: str | None = None
    #: CA that signed the webhook receiver's certificate (None: the system store)
    webhook_ca_file: Path | None = None
    #: HMAC-SHA256 key: the body's signature goes in ``X-PACS-Bridge-Signature: sha256=<hex>``
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    allow_plaintext: bool = False

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a crontab expression (minute hour day month weekday): {exc}") from None
        return v

    @model_validator(mode="after")
    def _https(self) -> ReviewSection:
        if self.webhook_url is not None:
            self.webhook_url = check_client_url(self.webhook_url, key="webhook_url", tls="https", plain="http",
                                                allow_plaintext=self.allow_plaintext,
                                                carries="user names and review comments")
        return self


class BreakGlassSection(_Section):
    """Break-glass (emergency access, docs/governance.md): how fresh the second factor must be and
    where the alert goes besides the audit trail and syslog.  What a grant allows and for how long
    is the policy's ``emergency:`` section; the per-user request limit is ``web.rate_limits.break_glass``."""

    #: the requester's multi-factor login must be at most this old when the grant is given (the
    #: gateway also asks Keycloak for a new login: prompt=login, max_age=0)
    fresh_auth_seconds: int = Field(300, ge=10, le=900)
    #: a JSON POST per request (the on-call security team's chat or paging hook); https only
    webhook_url: str | None = None
    #: CA that signs the webhook receiver's certificate (None: the system store)
    webhook_ca_file: Path | None = None
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)
    #: send an alert-severity syslog message to ``audit.syslog_host`` at once (besides the audit record)
    syslog_alert: bool = True

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is None:
            return None
        problem = url_problem(v, ("https",))
        if problem is not None:
            raise ValueError(f"{problem} (the alert carries patient ids and the reason: TLS only)")
        return v


class Settings(BaseSettings):
    """The whole configuration.  Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    bridge: BridgeSection = Field(default_factory=BridgeSection)
    keycloak: KeycloakSection = Field(default_factory=KeycloakSection)
    directory: DirectorySection = Field(default_factory=DirectorySection)
    pacs: PacsSection = Field(default_factory=PacsSection)
    tokens: TokensSection = Field(default_factory=TokensSection)
    mfa: MfaSection = Field(default_factory=MfaSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    scim: ScimSection = Field(default_factory=ScimSection)
    store: StoreSection = Field(default_factory=StoreSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    web: WebSection = Field(default_factory=WebSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    compliance: ComplianceSection = Field(default_factory=ComplianceSection)
    sharing: SharingSection = Field(default_factory=SharingSection)
    review: ReviewSection = Field(default_factory=ReviewSection)
    break_glass: BreakGlassSection = Field(default_factory=BreakGlassSection)

    _yaml_data: dict[str, Any] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the YAML (passed by load_config); env wins over it.
        return (env_settings, init_settings)


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts) or "(top level)"


def _reason(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "extra_forbidden":
        msg = "unknown key (check the spelling; see examples/bridge.yaml)"
    return msg


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = _format_loc(tuple(err.get("loc", ())))
        reason = _reason(err)
        # model-level validators report "url: ..." inside the message; lift that into the path.
        head, sep, tail = reason.partition(": ")
        if sep and head.isidentifier() and not loc.endswith(head):
            loc, reason = f"{loc}.{head}", tail
        out.append((loc, reason))
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read the YAML file; any problem is a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("(top level)", "must be a mapping of sections")])
    return data


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load and validate; raise ConfigError listing every problem."""
    data: dict[str, Any] = read_yaml(Path(path)) if path else {}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(str(path or "(defaults)"), _problems(exc)) from None


def plaintext_warnings(settings: Settings) -> list[str]:
    """What ``check-config`` (and ``serve`` at start) prints as WARNING lines: every section that
    opted out of TLS, and a syslog collector the bridge does not authenticate to."""
    out = []
    for name in ("keycloak", "directory", "pacs", "scim", "store", "web", "gateway"):
        if getattr(getattr(settings, name), "allow_plaintext", False):
            out.append(f"{name}.allow_plaintext is true: this hop may run without TLS "
                       "(credentials and patient data readable on the network)")
    a = settings.audit
    if a.syslog_host and a.syslog_client_cert_file is None:
        out.append("audit: syslog without a client certificate (audit.syslog_client_cert_file): "
                   "the collector cannot authenticate the bridge (IHE ATNA expects mutual TLS)")
    return out


def summary(settings: Settings) -> list[tuple[str, str]]:
    """A one-screen summary for check-config; never prints a secret."""

    def secret(v: SecretStr | None) -> str:
        return "set" if v is not None and v.get_secret_value() else "not set"

    s = settings
    return [
        ("bridge", f"{s.bridge.public_url} (sessions {s.bridge.session_idle_minutes} min idle, "
                   f"{s.bridge.session_absolute_hours} h max)"),
        ("keycloak", f"{s.keycloak.url} realm={s.keycloak.realm} client={s.keycloak.client_id} "
                     f"secret {secret(s.keycloak.client_secret)}"),
        ("directory", f"{s.directory.kind} {s.directory.url}"
                      f"{' +StartTLS' if s.directory.start_tls else ''} base={s.directory.base_dn} "
                      f"bind={s.directory.bind_dn or '(anonymous)'} password {secret(s.directory.bind_password)}"),
        ("pacs", f"audience={s.pacs.audience} orthanc={s.pacs.orthanc_url or '-'}"),
        ("tokens", f"{s.tokens.algorithm}, {s.tokens.lifetime_seconds} s (max {s.tokens.max_lifetime_seconds} s)"),
        ("mfa", f"acr={s.mfa.required_acr} or amr in {s.mfa.accepted_amr}, "
                f"max age {s.mfa.max_auth_age_seconds} s"),
        ("sync", f"every {s.sync.interval_seconds} s -> {', '.join(s.sync.targets)}; deletion threshold "
                 f"{s.sync.deletion_threshold_count} or {s.sync.deletion_threshold_percent}%; "
                 f"policy {s.sync.policy_file or '(none)'}"),
        ("scim", s.scim.url or "(off)"),
        ("store", s.store.url.split("@")[-1] if "@" in s.store.url else s.store.url),
        ("audit", f"syslog {s.audit.syslog_host or '(off)'}:{s.audit.syslog_port}"
                  f"{' with client certificate' if s.audit.syslog_client_cert_file else ''}, "
                  f"retention {s.audit.retention_days} days"),
        ("web", f"client address from {s.web.trusted_proxy_hops} trusted proxy hop(s); rate limits in "
                f"{s.web.rate_limit_storage_url.split('://')[0]}; /metrics "
                + (f"from {', '.join(s.web.metrics.allow) or 'nowhere'}"
                   f"{' or with the token' if s.web.metrics.bearer_token else ''}"
                   if s.web.metrics.enabled else "off")),
        ("gateway", f"{s.bridge.public_url}{s.gateway.prefix}/ -> {s.gateway.orthanc_url} (idle "
                    f"{s.gateway.idle_timeout_seconds} s, max {s.gateway.absolute_lifetime_seconds} s)"
                    if s.gateway.enabled else "(off)"),
        ("sharing", f"{s.sharing.public_url or s.bridge.public_url}{s.sharing.prefix}/ (recipient sessions "
                    f"{s.sharing.session_minutes} min, lockout after {s.sharing.lockout_failures} wrong passcodes)"),
    ]
