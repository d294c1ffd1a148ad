"""The ``sharing:`` section of the policy: who may share a study with whom, for how long, how often,
under which purpose and legal basis, and how the study is de-identified on the way out.

The model is here, beside the rest of the policy, so the policy loader validates it in the same pass
(every error located, like ``sharing.rules[2].deidentify``); the decision that later endpoints call is
:func:`bridge.sharing.policy.decide_share`, and the de-identifier that applies ``DeidProfile`` is
:mod:`bridge.sharing.deidentify`.

Why an external rule cannot turn de-identification off: an external recipient is outside the
hospital's access control, so what leaves must carry no direct identifiers (issue 14: "an external
share without de-identification is refused by policy"). The loader refuses such a rule and the
decision function refuses such a request, so neither a hand-edited file nor a crafted request gets
an identified study out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from bridge.core.permissions import Permission, UnknownPermissionError, parse
from bridge.policy.model import GroupRef, Role

#: GDPR Chapter V: the European Economic Area (EU 27 + Iceland, Liechtenstein, Norway). A recipient
#: whose country is outside ``home_countries`` (default: this list) needs a transfer basis.
EEA_COUNTRIES: tuple[str, ...] = (
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IS", "IT",
    "LI", "LT", "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
)

#: the burned-in-annotation default (issue 14): when Burned In Annotation (0028,0301) is absent,
#: these modalities are refused (ultrasound, secondary capture, other, endoscopy, external camera
#: photography: text is routinely burned into their pixels); every other modality is allowed.
DEFAULT_REFUSED_MODALITIES: tuple[str, ...] = ("US", "SC", "OT", "ES", "XC")


class DeidOption(StrEnum):
    """PS3.15 Annex E options a share may select (names follow the option columns of Table E.1-1).

    Not offered: Retain UIDs (a share always remaps UIDs, so shares cannot be linked), Retain Safe
    Private as a blanket option (the policy names the private attributes to keep instead, and the
    profile then records Retain Safe Private), and the pixel/graphics/structured-content cleaning
    options (the bridge does not clean pixel data: burned-in images are refused instead).
    """

    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"  # dates shifted per share
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    CLEAN_DESCRIPTORS = "clean-descriptors"


#: options of Table E.1-1 a share must never select, with the reason given to the policy author
REFUSED_OPTIONS: dict[str, str] = {
    "retain-uids": "a share always remaps UIDs (consistent within a share, different across shares)",
    "retain-safe-private": "list the private attributes to keep under deidentification.keep_private",
    "clean-pixel-data": "the bridge does not clean pixel data; burned-in images are refused instead",
    "clean-recognizable-visual-features": "the bridge does not clean pixel data",
    "clean-graphics": "the bridge does not clean graphics; overlays and curves are removed",
    "clean-structured-content": "the bridge does not clean structured content",
}


@dataclass(frozen=True)
class PrivateTag:
    """A private attribute kept through de-identification: its group, its private creator and the
    element's low byte within the creator's block (so (0029,xx08) of 'SIEMENS CSA HEADER' is
    ``PrivateTag(0x0029, "SIEMENS CSA HEADER", 0x08)`` wherever the block was reserved)."""

    group: int
    creator: str
    element: int

    def __str__(self) -> str:
        return f'({self.group:04X},"{self.creator}",{self.element:02X})'


@dataclass(frozen=True)
class DeidProfile:
    """What the de-identifier applies: the Basic Profile plus `options`, the private attributes to
    keep, and the modalities refused when Burned In Annotation is absent."""

    options: frozenset[DeidOption] = frozenset()
    keep_private: tuple[PrivateTag, ...] = ()
    refuse_modalities_without_bia: frozenset[str] = frozenset(DEFAULT_REFUSED_MODALITIES)


@dataclass(frozen=True)
class UserRef:
    """An internal user: exactly one of `dn` / `id` (objectGUID or entryUUID)."""

    dn: str | None = None
    id: str | None = None

    def __str__(self) -> str:
        return f"id={self.id}" if self.id else f"dn={self.dn}"


@dataclass(frozen=True)
class ShareRule:
    """One way a study may be shared. ``kind`` internal: with `users` / members of `groups`;
    external: with a recipient whose institution is in `institutions` or whose e-mail domain is in
    `email_domains`. `from_roles` (empty: any) limits who may share under the rule; `permissions`
    are what the share grants (view, optionally download)."""

    id: str
    index: int
    kind: Literal["internal", "external"]
    users: tuple[UserRef, ...] = ()
    groups: tuple[GroupRef, ...] = ()
    institutions: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()
    from_roles: tuple[str, ...] = ()
    permissions: frozenset[Permission] = frozenset({Permission.VIEW})
    max_lifetime_seconds: int = 7 * 86400
    max_uses: int | None = None
    deidentify: bool = True
    purposes: tuple[str, ...] = ()  # empty: every purpose of sharing.purposes
    description: str = ""


@dataclass(frozen=True)
class SharingPolicy:
    """The ``sharing:`` section. Absent from the file: no share is allowed at all."""

    rules: tuple[ShareRule, ...]
    purposes: tuple[str, ...]
    legal_bases: tuple[str, ...]
    transfer_bases: tuple[str, ...] = ()
    home_countries: tuple[str, ...] = EEA_COUNTRIES
    deidentification: DeidProfile = field(default_factory=DeidProfile)


# --- validation ------------------------------------------------------------------------------------

SHARING_KEYS = {"purposes", "legal_bases", "transfer_bases", "home_countries", "deidentification", "rules"}
DEID_KEYS = {"profile", "options", "keep_private", "burned_in_annotation"}
BIA_KEYS = {"refuse_when_absent"}
RULE_KEYS = {"id", "kind", "to", "from_roles", "permissions", "max_lifetime", "max_uses", "deidentify",
             "purposes", "description"}
TO_KEYS = {"internal": {"users", "groups"}, "external": {"institutions", "email_domains"}}
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
HEX = re.compile(r"^(0x)?[0-9A-Fa-f]{1,4}$")
UUIDISH = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SHAREABLE = frozenset({Permission.VIEW, Permission.DOWNLOAD})
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int | None:
    """'30m', '72h', '7d' -> seconds; None when not of that form."""
    m = DURATION.match(text.strip()) if isinstance(text, str) else None
    return int(m.group(1)) * UNIT_SECONDS[m.group(2)] if m else None


class SharingValidator:
    """Validates the section through the policy loader's error list (``err(location, reason)``), so
    the file's problems are reported together. ``group_ref`` is the loader's group parser (DN or id,
    never a bare name)."""

    def __init__(self, err: Callable[[str, str], None], unknown_keys: Callable[[str, dict, set[str]], None],
                 str_list: Callable[[str, Any], list[str]], group_ref: Callable[[str, Any], GroupRef | None]):
        self.err, self._unknown_keys, self._str_list, self._group_ref = err, unknown_keys, str_list, group_ref

    def section(self, data: Any, roles: Mapping[str, Role]) -> SharingPolicy | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            self.err("sharing", "must be a mapping with purposes, legal_bases, deidentification and rules")
            return None
        self._unknown_keys("sharing", data, SHARING_KEYS)
        purposes = self._required_list("sharing.purposes", data.get("purposes"),
                                       "the purposes of use a sharer may state (e.g. TREAT, HRESCH)")
        legal = self._required_list("sharing.legal_bases", data.get("legal_bases"),
                                    "the GDPR legal bases a sharer may record (Art. 6 and Art. 9)")
        transfer = self._str_list("sharing.transfer_bases", data.get("transfer_bases"))
        home = EEA_COUNTRIES
        if "home_countries" in data:
            home = tuple(c.upper() for c in self._str_list("sharing.home_countries", data.get("home_countries")))
            for i, c in enumerate(home):
                if not COUNTRY.match(c):
                    self.err(f"sharing.home_countries[{i}]", f"{c!r} is not an ISO 3166-1 alpha-2 country code")
        deid = self.deidentification(data.get("deidentification"))
        rules = self.rules(data.get("rules"), roles, set(purposes))
        return SharingPolicy(tuple(rules), tuple(purposes), tuple(legal), tuple(transfer), home, deid)

    def _required_list(self, loc: str, value: Any, what: str) -> list[str]:
        if value is None:
            self.err(loc, f"required: {what}")
            return []
        out = self._str_list(loc, value)
        if isinstance(value, list) and not value:
            self.err(loc, f"must list at least one value: {what}")
        return out

    def deidentification(self, data: Any) -> DeidProfile:
        loc = "sharing.deidentification"
        if data is None:
            return DeidProfile()
        if not isinstance(data, dict):
            self.err(loc, "must be a mapping with profile, options, keep_private, burned_in_annotation")
            return DeidProfile()
        self._unknown_keys(loc, data, DEID_KEYS)
        profile = data.get("profile", "basic")
        if profile != "basic":
            self.err(f"{loc}.profile", f"unknown profile {profile!r} (supported: basic = PS3.15 Annex E "
                                       "Basic Application Level Confidentiality Profile)")
        options: set[DeidOption] = set()
        for i, name in enumerate(self._str_list(f"{loc}.options", data.get("options"))):
            if name in REFUSED_OPTIONS:
                self.err(f"{loc}.options[{i}]", f"{name!r} is not allowed for shares: {REFUSED_OPTIONS[name]}")
                continue
            try:
                options.add(DeidOption(name))
            except ValueError:
                valid = ", ".join(o.value for o in DeidOption)
                self.err(f"{loc}.options[{i}]", f"unknown option {name!r}; valid: {valid}")
        if {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES, DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= options:
            self.err(f"{loc}.options", "choose one of retain-longitudinal-full-dates and "
                                       "retain-longitudinal-modified-dates")
        keep = self.keep_private(f"{loc}.keep_private", data.get("keep_private"))
        refuse = DEFAULT_REFUSED_MODALITIES
        bia = data.get("burned_in_annotation")
        if bia is not None:
            if not isinstance(bia, dict):
                self.err(f"{loc}.burned_in_annotation", "must be a mapping with refuse_when_absent")
            else:
                self._unknown_keys(f"{loc}.burned_in_annotation", bia, BIA_KEYS)
                if "refuse_when_absent" in bia:
                    raw = self._str_list(f"{loc}.burned_in_annotation.refuse_when_absent",
                                         bia.get("refuse_when_absent"))
                    refuse = tuple(m.upper() for m in raw)
                    for i, m in enumerate(refuse):
                        if not MODALITY.match(m):
                            self.err(f"{loc}.burned_in_annotation.refuse_when_absent[{i}]",
                                     f"{m!r} is not a DICOM modality code (e.g. US, SC, OT)")
        return DeidProfile(frozenset(options), tuple(keep), frozenset(refuse))

    def keep_private(self, loc: str, data: Any) -> list[PrivateTag]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.err(loc, "must be a list of {group, creator, element}")
            return []
        out = []
        for i, spec in enumerate(data):
            here = f"{loc}[{i}]"
            if not isinstance(spec, dict):
                self.err(here, "must be a mapping with group, creator and element")
                continue
            self._unknown_keys(here, spec, {"group", "creator", "element", "description"})
            group, element = self._hex(f"{here}.group", spec.get("group")), self._hex(f"{here}.element",
                                                                                        spec.get("element"))
            creator = spec.get("creator")
            if not isinstance(creator, str) or not creator.strip():
                self.err(f"{here}.creator", "required: the private creator string (e.g. SIEMENS CSA HEADER)")
                continue
            if group is not None and (group % 2 == 0 or group <= 0x0008):
                self.err(f"{here}.group", f"{group:04X} is not a private group (odd, above 0008)")
                continue
            if element is not None and element > 0xFF:
                self.err(f"{here}.element", "the element's low byte within the creator's block (00-FF)")
                continue
            if group is not None and element is not None:
                out.append(PrivateTag(group, creator.strip(), element))
        return out

    def _hex(self, loc: str, value: Any) -> int | None:
        if not isinstance(value, str) or not HEX.match(value.strip()):
            self.err(loc, f"{value!r}: give hexadecimal digits as a quoted string (e.g. \"0029\")")
            return None
        return int(value.strip(), 16)

    def rules(self, data: Any, roles: Mapping[str, Role], purposes: set[str]) -> list[ShareRule]:
        if not isinstance(data, list) or not data:
            self.err("sharing.rules", "must be a non-empty list of share rules")
            return []
        out: list[ShareRule] = []
        ids: dict[str, int] = {}
        for i, spec in enumerate(data):
            rule = self.rule(f"sharing.rules[{i}]", i, spec, roles, purposes, ids)
            if rule is not None:
                out.append(rule)
        return out

    def rule(self, loc: str, i: int, spec: Any, roles: Mapping[str, Role], purposes: set[str],
             ids: dict[str, int]) -> ShareRule | None:
        if not isinstance(spec, dict):
            self.err(loc, "must be a mapping with id, kind, to and the limits")
            return None
        self._unknown_keys(loc, spec, RULE_KEYS)
        ok = True
        rid = spec.get("id")
        if not isinstance(rid, str) or not RULE_ID.match(rid):
            self.err(f"{loc}.id", "required: letters, digits, '.', '_' or '-' (named in decisions and audit)")
            rid, ok = f"#{i}", False
        elif rid in ids:
            self.err(f"{loc}.id", f"duplicate share rule id {rid!r} (also sharing.rules[{ids[rid]}])")
            ok = False
        ids[rid] = i
        kind = spec.get("kind")
        if kind not in ("internal", "external"):
            self.err(f"{loc}.kind", f"must be internal or external, not {kind!r}")
            return None
        to = spec.get("to")
        users: list[UserRef] = []
        groups: list[GroupRef] = []
        institutions: list[str] = []
        domains: list[str] = []
        if not isinstance(to, dict) or not to:
            self.err(f"{loc}.to", f"required: a mapping with {' and/or '.join(sorted(TO_KEYS[kind]))}")
            ok = False
        else:
            self._unknown_keys(f"{loc}.to", to, TO_KEYS[kind])
            if kind == "internal":
                users = self._users(f"{loc}.to.users", to.get("users"))
                groups = self._groups(f"{loc}.to.groups", to.get("groups"))
                if not users and not groups:
                    self.err(f"{loc}.to", "name at least one user or group (by dn: or id:)")
                    ok = False
            else:
                institutions = self._str_list(f"{loc}.to.institutions", to.get("institutions"))
                domains = [d.lower() for d in self._str_list(f"{loc}.to.email_domains", to.get("email_domains"))]
                for j, d in enumerate(domains):
                    if not DOMAIN.match(d):
                        self.err(f"{loc}.to.email_domains[{j}]", f"{d!r} is not a DNS domain (e.g. uni-x.example)")
                        ok = False
                if not institutions and not domains:
                    self.err(f"{loc}.to", "name at least one institution or e-mail domain")
                    ok = False
        from_roles = self._str_list(f"{loc}.from_roles", spec.get("from_roles"))
        for j, r in enumerate(from_roles):
            if roles and r not in roles:
                self.err(f"{loc}.from_roles[{j}]", f"unknown role {r!r} (defined: {', '.join(sorted(roles))})")
                ok = False
            elif r in roles and Permission.SHARE not in roles[r].effective_permissions:
                self.err(f"{loc}.from_roles[{j}]", f"role {r!r} does not hold the 'share' permission")
                ok = False
        perms = self._permissions(f"{loc}.permissions", spec.get("permissions", ["view"]))
        lifetime = spec.get("max_lifetime")
        seconds = parse_duration(lifetime) if lifetime is not None else None
        if seconds is None:
            self.err(f"{loc}.max_lifetime", f"required: a duration like 30m, 72h or 7d (got {lifetime!r})")
            ok = False
        uses = spec.get("max_uses")
        if uses is not None and (not isinstance(uses, int) or isinstance(uses, bool) or uses < 1):
            self.err(f"{loc}.max_uses", f"must be a positive whole number or absent (unlimited), not {uses!r}")
            ok = False
        deidentify = spec.get("deidentify", kind == "external")
        if not isinstance(deidentify, bool):
            self.err(f"{loc}.deidentify", f"must be true or false, not {deidentify!r}")
            ok = False
        elif kind == "external" and not deidentify:
            self.err(f"{loc}.deidentify", "an external share must be de-identified (PS3.15 Annex E); "
                                          "an external rule cannot turn it off")
            ok = False
        rule_purposes = self._str_list(f"{loc}.purposes", spec.get("purposes"))
        for j, p in enumerate(rule_purposes):
            if purposes and p not in purposes:
                self.err(f"{loc}.purposes[{j}]", f"{p!r} is not in sharing.purposes ({', '.join(sorted(purposes))})")
                ok = False
        if not ok or perms is None:
            return None
        return ShareRule(
            id=rid, index=i, kind=kind, users=tuple(users), groups=tuple(groups),
            institutions=tuple(institutions), email_domains=tuple(domains), from_roles=tuple(from_roles),
            permissions=perms, max_lifetime_seconds=int(seconds or 0), max_uses=uses, deidentify=bool(deidentify),
            purposes=tuple(rule_purposes), description=str(spec.get("description") or ""),
        )

    def _permissions(self, loc: str, value: Any) -> frozenset[Permission] | None:
        names = self._str_list(loc, value)
        out: set[Permission] = set()
        for j, name in enumerate(names):
            try:
                p = parse(name)
            except UnknownPermissionError as exc:
                self.err(f"{loc}[{j}]", str(exc))
                return None
            if p not in SHAREABLE:
                self.err(f"{loc}[{j}]", f"a share grants only view and download, not {name!r}")
                return None
            out.add(p)
        if Permission.VIEW not in out:
            self.err(loc, "must include view (download alone cannot be shared)")
            return None
        return frozenset(out)

    def _users(self, loc: str, data: Any) -> list[UserRef]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.err(loc, "must be a list of {dn: ...} or {id: ...}")
            return []
        out = []
        for j, spec in enumerate(data):
            # a user is named like a group (full DN or stable id, never a bare login name)
            if isinstance(spec, str) and "=" not in spec and not UUIDISH.match(spec.strip()):
                self.err(f"{loc}[{j}]", f"a bare user name ({spec!r}) is ambiguous (login names are reused "
                                        "and renamed); give dn: <full DN> or id: <objectGUID/entryUUID>")
                continue
            ref = self._group_ref(f"{loc}[{j}]", spec)
            if ref is not None:
                out.append(UserRef(dn=ref.dn, id=ref.id))
        return out

    def _groups(self, loc: str, data: Any) -> list[GroupRef]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.err(loc, "must be a list of {dn: ...} or {id: ...}")
            return []
        return [g for j, spec in enumerate(data) if (g := self._group_ref(f"{loc}[{j}]", spec)) is not None]
