"""The one MFA rule: when does a login count as multi-factor, and how to ask for a step-up.

Used by the token service (on the Keycloak token it exchanges) and by the PACS verifier (on the
PACS token it receives), so both sides apply exactly the same rule.  Stdlib only: the verifier
runs under Debian's ``/usr/bin/python3`` inside Orthanc.

The rule (docs/tokens.md): the login is multi-factor iff

* ``acr`` equals the configured ``required_acr`` (Keycloak's acr-to-LoA map names the level), **or**
* ``amr`` contains one of ``accepted_amr`` (RFC 8176 ``otp``, ``hwk``, ``mfa``),

**and** ``auth_time`` is present and no older than ``max_auth_age_seconds``.  ``acr_values`` in a
request can be tampered with by the client; only the signed token's claims count.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: RFC 9470 error code
INSUFFICIENT_USER_AUTHENTICATION = "insufficient_user_authentication"


#: the keys of the ``mfa`` object (:meth:`MfaRule.from_mapping`)
MAPPING_KEYS = ("required_acr", "accepted_amr", "max_auth_age_seconds")


@dataclass(frozen=True)
class MfaRule:
    """What counts as a multi-factor login; an empty ``required_acr``/``accepted_amr`` disables that path."""

    required_acr: str | None = "mfa"
    accepted_amr: frozenset[str] = frozenset({"otp", "hwk", "mfa"})
    max_auth_age_seconds: int = 12 * 3600
    leeway_seconds: int = 30

    @classmethod
    def from_section(cls, section: Any) -> MfaRule:
        """From the config's ``mfa`` section (duck-typed so this module never imports pydantic),
        through the same parser as the plugin's JSON (:meth:`from_mapping`)."""
        return cls.from_mapping({key: getattr(section, key) for key in MAPPING_KEYS})

    @classmethod
    def from_mapping(cls, data: Any, where: str = "mfa") -> MfaRule:
        """From a JSON object ``{"required_acr", "accepted_amr", "max_auth_age_seconds"}`` (each
        optional; the plugin's ``mfa`` section): the one parser of that shape.  A ValueError names
        ``where.<key>``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: must be an object with {', '.join(MAPPING_KEYS)}")
        unknown = sorted(set(data) - set(MAPPING_KEYS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; known: {', '.join(MAPPING_KEYS)}")
        default = cls()
        acr = data.get("required_acr", default.required_acr)
        if acr is not None and not isinstance(acr, str):
            raise ValueError(f"{where}.required_acr: must be a string or null")
        amr = data.get("accepted_amr", sorted(default.accepted_amr))
        if not isinstance(amr, list | tuple) or not all(isinstance(v, str) for v in amr):
            raise ValueError(f"{where}.accepted_amr: must be a list of strings")
        age = data.get("max_auth_age_seconds", default.max_auth_age_seconds)
        if type(age) is not int or age <= 0:
            raise ValueError(f"{where}.max_auth_age_seconds: must be a positive integer")
        try:
            return cls(required_acr=acr or None, accepted_amr=frozenset(amr), max_auth_age_seconds=age)
        except ValueError as exc:
            raise ValueError(f"{where}: {str(exc).removeprefix('mfa: ')}") from None

    def to_mapping(self) -> dict[str, Any]:
        """The JSON object :meth:`from_mapping` reads (what the bridge writes into the plugin's settings)."""
        return {"required_acr": self.required_acr or None, "accepted_amr": sorted(self.accepted_amr),
                "max_auth_age_seconds": int(self.max_auth_age_seconds)}

    def __post_init__(self) -> None:
        if not self.required_acr and not self.accepted_amr:
            raise ValueError("mfa: set required_acr or accepted_amr, else no login could ever count as MFA")


@dataclass(frozen=True)
class MfaVerdict:
    ok: bool
    reason: str


def _amr(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, Iterable):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def check(claims: Mapping[str, Any], rule: MfaRule, now: float | None = None) -> MfaVerdict:
    """Apply the rule to a token's claims; the reason says what is missing (never who the user is)."""
    now = time.time() if now is None else now
    auth_time = claims.get("auth_time")
    if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
        return MfaVerdict(False, "token carries no auth_time")
    if auth_time > now + rule.leeway_seconds:
        return MfaVerdict(False, "auth_time lies in the future")
    age = now - auth_time
    if age > rule.max_auth_age_seconds + rule.leeway_seconds:
        return MfaVerdict(False, f"authentication is {int(age)} s old (max {rule.max_auth_age_seconds} s)")
    acr = claims.get("acr")
    if rule.required_acr and acr == rule.required_acr:
        return MfaVerdict(True, f"acr={acr}")
    matched = _amr(claims.get("amr")) & rule.accepted_amr
    if matched:
        return MfaVerdict(True, "amr=" + ",".join(sorted(matched)))
    wanted = []
    if rule.required_acr:
        wanted.append(f"acr {rule.required_acr}")
    if rule.accepted_amr:
        wanted.append("amr one of " + ",".join(sorted(rule.accepted_amr)))
    return MfaVerdict(False, "no second factor: need " + " or ".join(wanted))
