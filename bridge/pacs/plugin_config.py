"""Configuration of the bridge's Orthanc plugin: a small JSON file, overridable by environment.

Stdlib only (it runs under Debian's ``/usr/bin/python3`` inside Orthanc, which has no pydantic).
Where the plugin finds it, first match wins:

1. ``PACS_BRIDGE_PLUGIN_CONFIG`` (environment of the Orthanc process): path of the JSON file;
2. ``"PacsBridge": {"ConfigFile": "..."}`` in Orthanc's own configuration;
3. ``"PacsBridge": {...keys below...}`` inline in Orthanc's configuration.

The encrypted image store's settings are the nested ``"storage"`` object, read once when Orthanc
starts (a storage area cannot change while Orthanc runs): :mod:`bridge.pacs.storage_area`.
The MFA rule is a nested object, ``"mfa": {"required_acr", "accepted_amr", "max_auth_age_seconds"}``
(parsed by :meth:`bridge.core.mfa.MfaRule.from_mapping`, the bridge's ``mfa`` section in JSON).
Every key may be overridden by ``PACS_BRIDGE_PLUGIN_<KEY>`` (upper case), e.g.
``PACS_BRIDGE_PLUGIN_JWKS_URL``, an MFA key by ``PACS_BRIDGE_PLUGIN_MFA_<KEY>``.
The file is re-read when it changes (checked at most every
``reload_check_seconds``), so an operator can move the bridge or rotate the CA file without
restarting Orthanc; a file that becomes invalid keeps the plugin denying everything until fixed.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bridge.core import mfa as mfa_rule
from bridge.core.mfa import MfaRule
from bridge.core.transport import url_problem
from bridge.core.verifier import VerifierConfig
from bridge.pacs.storage_area import SETTINGS_KEY as STORAGE_KEY

ENV_FILE = "PACS_BRIDGE_PLUGIN_CONFIG"
#: the header in which the bridge's gateway names the workstation a request came from; trusted
#: only when the TCP peer is one of ``gateway_addresses`` (docs/gateway.md, "Header trust")
WORKSTATION_HEADER = "X-Pacs-Bridge-Workstation"
ENV_PREFIX = "PACS_BRIDGE_PLUGIN_"
ORTHANC_SECTION = "PacsBridge"


class PluginConfigError(ValueError):
    """A configuration problem, naming the key and the file."""


@dataclass(frozen=True)
class PluginConfig:
    """What the plugin needs to verify tokens, resolve scopes and ship audit events."""

    issuer: str
    audience: str
    jwks_url: str
    ca_file: str | None = None
    #: required: the bridge's revocation list (a config without it is unusable: every request denied)
    revocation_url: str | None = None
    algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    leeway_seconds: int = 30
    jwks_min_refresh_seconds: float = 30.0
    revocation_refresh_seconds: float = 10.0
    revocation_max_stale_seconds: float = 300.0
    #: the MFA rule: the nested ``mfa`` object (the same three knobs as the bridge's ``mfa`` section)
    mfa: MfaRule = field(default_factory=MfaRule)
    #: the bridge's audit ingest endpoint (POST, JSON); None: spool only
    audit_url: str | None = None
    #: file holding the bearer secret for ``audit_url``
    audit_token_file: str | None = None
    #: where events go while the bridge is unreachable (JSONL, replayed later)
    audit_spool_dir: str = "/var/lib/orthanc/pacs-bridge-audit"
    audit_flush_seconds: float = 1.0
    #: name of this PACS in audit events (AuditSourceID / network access point)
    pacs_name: str = "orthanc"
    #: Orthanc's log file, tailed for refused DICOM associations (None: not audited, see docs)
    orthanc_log_file: str | None = None
    #: how long a resource -> study attribute mapping is trusted
    scope_cache_seconds: float = 300.0
    reload_check_seconds: float = 2.0
    #: addresses/networks of the bridge's gateway: only a request from one of them may name the
    #: workstation in :data:`WORKSTATION_HEADER` (empty: the header is never trusted)
    gateway_addresses: tuple[str, ...] = ()
    source: str = field(default="(inline)", compare=False)

    def __post_init__(self) -> None:
        for name in ("issuer", "audience", "jwks_url"):
            if not getattr(self, name):
                raise PluginConfigError(f"{self.source}: {name} is required")
        if not self.revocation_url:
            # without it a revoked token (a logout, a disabled account) stays valid until it expires
            raise PluginConfigError(f"{self.source}: revocation_url is required (the bridge's /revocations)")
        for name in ("jwks_url", "revocation_url", "audit_url"):  # no plaintext opt-out: tokens travel here
            url = getattr(self, name)
            if url and (problem := url_problem(url, ("https",))):
                raise PluginConfigError(f"{self.source}: {name} must be an https:// URL ({problem})")
        if self.leeway_seconds < 0 or self.leeway_seconds > 120:
            raise PluginConfigError(f"{self.source}: leeway_seconds must be within 0..120")
        try:
            networks = tuple(ipaddress.ip_network(a, strict=False) for a in self.gateway_addresses)
        except ValueError as exc:
            raise PluginConfigError(f"{self.source}: gateway_addresses: {exc}") from None
        object.__setattr__(self, "_gateway_networks", networks)

    def audited_address(self, peer: str, headers: Mapping[str, str]) -> str:
        """The workstation address for the audit trail: the gateway's header when the TCP peer
        is a configured gateway address and the header holds exactly one IP address; otherwise
        the peer itself (a header from anyone else is ignored, whatever it says)."""
        value = _single_header(headers, WORKSTATION_HEADER)
        if value is None or not _in(peer, getattr(self, "_gateway_networks", ())):
            return peer
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            return peer

    def verifier_config(self) -> VerifierConfig:
        """The verifier's settings: the one mapping from the plugin's keys (the gate and the bench use it)."""
        return VerifierConfig(
            issuer=self.issuer,
            audience=self.audience,
            jwks_url=self.jwks_url,
            ca_file=self.ca_file,
            algorithms=self.algorithms,
            leeway_seconds=self.leeway_seconds,
            jwks_min_refresh_seconds=self.jwks_min_refresh_seconds,
            revocation_url=self.revocation_url,
            revocation_refresh_seconds=self.revocation_refresh_seconds,
            revocation_max_stale_seconds=self.revocation_max_stale_seconds,
            mfa_rule=self.mfa,
        )


def _in(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return any((mapped or ip) in net for net in networks)


def _single_header(headers: Mapping[str, str], name: str) -> str | None:
    """The header's value if it appears once (any case) with one value; a repeated or
    comma-joined header is None (which copy would be the truth?)."""
    values = [v for k, v in headers.items() if k.lower() == name.lower()]
    if len(values) != 1 or not isinstance(values[0], str) or "," in values[0]:
        return None
    return values[0]


def _coerce(name: str, annotation: Any, value: Any, source: str) -> Any:
    """JSON/env value -> the field's type (only the handful of types used above)."""
    text = str(annotation)
    try:
        if value is None:
            return None
        if text.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError("a list of strings")
            return tuple(value)
        if text == "int":
            return int(value)
        if text == "float":
            return float(value)
        if not isinstance(value, str):
            raise TypeError("a string")
        return value
    except (TypeError, ValueError) as exc:
        raise PluginConfigError(f"{source}: {name} must be {exc}") from None


def build(data: Mapping[str, Any], source: str, environ: Mapping[str, str] | None = None) -> PluginConfig:
    """A validated config from a mapping plus ``PACS_BRIDGE_PLUGIN_*`` overrides."""
    env = os.environ if environ is None else environ
    known = {f.name: f for f in fields(PluginConfig) if f.name != "source"}
    # the storage area's settings are read once at Orthanc's start (bridge/pacs/storage_area.py)
    unknown = sorted(set(data) - set(known) - {"ConfigFile", STORAGE_KEY})
    if unknown:
        raise PluginConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {"mfa": _mfa(data.get("mfa", {}), source, env)}
    for name, f in known.items():
        if name == "mfa":
            continue
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = _coerce(name, f.type, env_value or None, f"${ENV_PREFIX}{name.upper()}")
        elif name in data:
            values[name] = _coerce(name, f.type, data[name], source)
    try:
        return PluginConfig(**values, source=source)
    except TypeError as exc:  # a required key missing
        raise PluginConfigError(f"{source}: {exc}") from None


def _mfa(section: Any, source: str, env: Mapping[str, str]) -> MfaRule:
    """The nested ``mfa`` object plus ``PACS_BRIDGE_PLUGIN_MFA_<KEY>`` overrides, parsed by the core."""
    if isinstance(section, Mapping):
        section = dict(section)
        for key in mfa_rule.MAPPING_KEYS:
            raw = env.get(f"{ENV_PREFIX}MFA_{key.upper()}")
            if raw is None:
                continue
            if key == "accepted_amr":
                section[key] = [v for v in raw.replace(",", " ").split() if v]
            elif key == "max_auth_age_seconds":
                section[key] = int(raw) if raw.strip().isdigit() else raw
            else:
                section[key] = raw or None
    try:
        return MfaRule.from_mapping(section, "mfa")
    except ValueError as exc:
        raise PluginConfigError(f"{source}: {exc}") from None


def read_file(path: str | Path, environ: Mapping[str, str] | None = None) -> PluginConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PluginConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise PluginConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PluginConfigError(f"{path}: must be a JSON object")
    return build(data, str(path), environ)


def locate(orthanc_section: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file path to watch, or None when the config is inline in Orthanc's."""
    env = os.environ if environ is None else environ
    if env.get(ENV_FILE):
        return env[ENV_FILE]
    if orthanc_section and orthanc_section.get("ConfigFile"):
        return str(orthanc_section["ConfigFile"])
    return None
