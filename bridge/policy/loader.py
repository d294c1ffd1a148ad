"""Load and validate a policy YAML file; every problem is reported with file, location and field.

Example of an error message::

    examples/policy.yaml: 2 error(s)
      rules[3].group: a bare group name ('PACS-Users') is ambiguous; give dn: or id:
      rules[4].roles[0]: unknown role 'radiologst' (defined: auditor, radiologist, ...)

Why collect all errors instead of stopping at the first: a policy is edited by hand before a
change window; one pass should show everything to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bridge.core.permissions import Permission, UnknownPermissionError, parse
from bridge.errors import InputError
from bridge.policy.model import (
    CAPABILITIES,
    EMERGENCY,
    Conflict,
    EmergencyPolicy,
    GroupRef,
    Policy,
    Reviewers,
    ReviewerScope,
    Role,
    Rule,
)
from bridge.policy.sharing import SharingValidator

#: the queue id of the privacy officer (escalations, items no scope covers); no scope may use it
PRIVACY_OFFICER = "privacy-officer"
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
UUIDISH = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TOP_KEYS = {"version", "roles", "rules", "conflicts", "meta", "sharing", "reviewers", "emergency"}
ROLE_KEYS = {"description", "permissions", "scopes", "capabilities"}
EMERGENCY_KEYS = {"permissions", "lifetime_minutes"}
#: what an emergency grant may allow: reading and passing on one study, never changing or deleting
#: it, nor administering the PACS or reading the audit trail of one's own emergency
EMERGENCY_PERMISSIONS = frozenset({Permission.VIEW, Permission.DOWNLOAD, Permission.SEND})
#: the longest break-glass grant a policy may configure (a shift is not an emergency)
MAX_EMERGENCY_MINUTES = 240
RULE_KEYS = {"id", "group", "roles", "description"}
CONFLICT_KEYS = {"id", "roles", "action", "reason"}
REVIEWERS_KEYS = {"privacy_officer", "scopes"}
REVIEWER_SCOPE_KEYS = {"id", "group", "departments", "roles", "description"}


class PolicyError(InputError, ValueError):
    """Every problem found, each as ``(location, reason)``; str() is the readable list."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} error(s)"] + [f"  {loc}: {why}" for loc, why in problems]
        super().__init__("\n".join(lines), subject=source)


def load_policy(path: str | Path) -> Policy:
    """Read and validate `path`; raise PolicyError naming the file and every bad field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(p), [("(file)", f"cannot read: {exc.strerror}")]) from None
    return parse_policy(text, source=str(p))


def parse_policy(text: str, source: str = "(policy)") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise PolicyError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return _Validator(source).policy(data)


class _Validator:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[tuple[str, str]] = []

    def err(self, loc: str, why: str) -> None:
        self.problems.append((loc, why))

    def _unknown_keys(self, loc: str, data: dict[str, Any], allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                self.err(f"{loc}.{key}" if loc else str(key),
                         f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def _str_list(self, loc: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.err(loc, "must be a list of non-empty strings")
            return []
        return [v.strip() for v in value]

    def policy(self, data: Any) -> Policy:
        if not isinstance(data, dict):
            raise PolicyError(self.source, [("(top level)", "must be a mapping with roles: and rules:")])
        self._unknown_keys("", data, TOP_KEYS)
        version = data.get("version", 1)
        if version != 1:
            self.err("version", f"unsupported policy version {version!r} (supported: 1)")
        roles = self.roles(data.get("roles"))
        rules = self.rules(data.get("rules"), roles)
        conflicts = self.conflicts(data.get("conflicts"), roles)
        emergency = self.emergency(data.get("emergency"), roles)
        sharing = SharingValidator(self.err, self._unknown_keys, self._str_list, self.group_ref).section(
            data.get("sharing"), roles)
        reviewers = self.reviewers(data.get("reviewers"), roles)
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            self.err("meta", "must be a mapping")
            meta = {}
        if self.problems:
            raise PolicyError(self.source, self.problems)
        return Policy(roles, tuple(rules), tuple(conflicts), source=self.source, version=1,
                      meta={str(k): str(v) for k, v in meta.items()}, sharing=sharing, reviewers=reviewers,
                      emergency=emergency)

    def roles(self, data: Any) -> dict[str, Role]:
        if not isinstance(data, dict) or not data:
            self.err("roles", "must be a non-empty mapping of role name -> definition")
            return {}
        out: dict[str, Role] = {}
        for name, spec in data.items():
            loc = f"roles.{name}"
            if not isinstance(name, str) or not ROLE_NAME.match(name):
                self.err(loc, "role name must be lower case letters, digits and '-' (max 63)")
                continue
            if not isinstance(spec, dict):
                self.err(loc, "must be a mapping with description and permissions")
                continue
            self._unknown_keys(loc, spec, ROLE_KEYS)
            perms = set()
            raw_perms = spec.get("permissions")
            if not isinstance(raw_perms, list) or not raw_perms:
                self.err(f"{loc}.permissions", "must be a non-empty list of permissions")
                raw_perms = []
            for i, p in enumerate(raw_perms):
                try:
                    perms.add(parse(str(p)))
                except UnknownPermissionError as exc:
                    self.err(f"{loc}.permissions[{i}]", str(exc))
            scopes = spec.get("scopes") or {}
            if not isinstance(scopes, dict):
                self.err(f"{loc}.scopes", "must be a mapping with departments and/or institutions")
                scopes = {}
            self._unknown_keys(f"{loc}.scopes", scopes, {"departments", "institutions"})
            capabilities = self._str_list(f"{loc}.capabilities", spec.get("capabilities"))
            for i, cap in enumerate(capabilities):
                if cap not in CAPABILITIES:
                    self.err(f"{loc}.capabilities[{i}]",
                             f"unknown capability {cap!r} (known: {', '.join(sorted(CAPABILITIES))})")
            out[name] = Role(
                name=name, description=str(spec.get("description") or ""), permissions=frozenset(perms),
                capabilities=frozenset(c for c in capabilities if c in CAPABILITIES),
                departments=tuple(self._str_list(f"{loc}.scopes.departments", scopes.get("departments"))),
                institutions=tuple(self._str_list(f"{loc}.scopes.institutions", scopes.get("institutions"))),
            )
        return out

    def group_ref(self, loc: str, data: Any) -> GroupRef | None:
        if isinstance(data, str):
            if "=" in data and "," in data:
                return GroupRef(dn=data.strip())
            if UUIDISH.match(data.strip()):
                return GroupRef(id=data.strip().lower())
            self.err(loc, f"a bare group name ({data!r}) is ambiguous (same-named groups exist in "
                          "other OUs); give dn: <full DN> or id: <objectGUID/entryUUID>")
            return None
        if not isinstance(data, dict):
            self.err(loc, "must be a mapping with dn: or id:")
            return None
        self._unknown_keys(loc, data, {"dn", "id"})
        dn, gid = data.get("dn"), data.get("id")
        if bool(dn) == bool(gid):
            self.err(loc, "give exactly one of dn: or id:")
            return None
        if dn is not None:
            if not isinstance(dn, str) or "=" not in dn or "," not in dn:
                self.err(f"{loc}.dn", f"{dn!r} is not a full DN (e.g. CN=Radiology,OU=Groups,DC=x,DC=y)")
                return None
            return GroupRef(dn=dn.strip())
        if not isinstance(gid, str) or not UUIDISH.match(gid.strip()):
            self.err(f"{loc}.id", f"{gid!r} is not a GUID/UUID (objectGUID or entryUUID)")
            return None
        return GroupRef(id=gid.strip().lower())

    def rules(self, data: Any, roles: dict[str, Role]) -> list[Rule]:
        if not isinstance(data, list) or not data:
            self.err("rules", "must be a non-empty list")
            return []
        out: list[Rule] = []
        ids: dict[str, int] = {}
        for i, spec in enumerate(data):
            loc = f"rules[{i}]"
            if not isinstance(spec, dict):
                self.err(loc, "must be a mapping with id, group and roles")
                continue
            self._unknown_keys(loc, spec, RULE_KEYS)
            rid = spec.get("id")
            if not isinstance(rid, str) or not RULE_ID.match(rid):
                self.err(f"{loc}.id", "required: letters, digits, '.', '_' or '-' (used in audit events)")
                rid = f"#{i}"
            elif rid in ids:
                self.err(f"{loc}.id", f"duplicate rule id {rid!r} (also rules[{ids[rid]}])")
            ids[rid] = i
            if "group" not in spec:
                self.err(f"{loc}.group", "required (dn: or id:)")
                group = None
            else:
                group = self.group_ref(f"{loc}.group", spec.get("group"))
            role_names = self._str_list(f"{loc}.roles", spec.get("roles"))
            if not role_names:
                self.err(f"{loc}.roles", "must list at least one role")
            for j, r in enumerate(role_names):
                if roles and r not in roles:
                    self.err(f"{loc}.roles[{j}]", f"unknown role {r!r} (defined: {', '.join(sorted(roles))})")
            if group is not None:
                out.append(Rule(rid, i, group, tuple(role_names), str(spec.get("description") or "")))
        return out

    def emergency(self, data: Any, roles: dict[str, Role]) -> EmergencyPolicy | None:
        """The ``emergency:`` section; a role with the ``emergency`` capability needs it (else its
        holders could ask for break-glass access that grants nothing: a silent misconfiguration)."""
        capable = sorted(n for n, r in roles.items() if EMERGENCY in r.capabilities)
        if data is None:
            for name in capable:
                self.err(f"roles.{name}.capabilities",
                         "the emergency capability needs the top-level emergency: section (its permissions)")
            return None
        if not isinstance(data, dict):
            self.err("emergency", "must be a mapping with permissions (and optional lifetime_minutes)")
            return None
        self._unknown_keys("emergency", data, EMERGENCY_KEYS)
        raw = data.get("permissions")
        perms = set()
        if not isinstance(raw, list) or not raw:
            self.err("emergency.permissions", "must be a non-empty list of permissions")
            raw = []
        for i, p in enumerate(raw):
            try:
                perm = parse(str(p))
            except UnknownPermissionError as exc:
                self.err(f"emergency.permissions[{i}]", str(exc))
                continue
            if perm not in EMERGENCY_PERMISSIONS:
                self.err(f"emergency.permissions[{i}]", f"{perm.value!r} cannot be granted in an emergency "
                         f"(allowed: {', '.join(sorted(p.value for p in EMERGENCY_PERMISSIONS))})")
            else:
                perms.add(perm)
        minutes = data.get("lifetime_minutes", 60)
        if type(minutes) is not int or not 1 <= minutes <= MAX_EMERGENCY_MINUTES:
            self.err("emergency.lifetime_minutes", f"must be a whole number of minutes from 1 to "
                                                   f"{MAX_EMERGENCY_MINUTES}, not {minutes!r}")
            minutes = 60
        return EmergencyPolicy(frozenset(perms), minutes)

    def conflicts(self, data: Any, roles: dict[str, Role]) -> list[Conflict]:
        if data is None:
            return []
        if not isinstance(data, list):
            self.err("conflicts", "must be a list")
            return []
        out: list[Conflict] = []
        for i, spec in enumerate(data):
            loc = f"conflicts[{i}]"
            if not isinstance(spec, dict):
                self.err(loc, "must be a mapping with roles (and optional id, action, reason)")
                continue
            self._unknown_keys(loc, spec, CONFLICT_KEYS)
            names = self._str_list(f"{loc}.roles", spec.get("roles"))
            if len(set(names)) < 2:
                self.err(f"{loc}.roles", "must list at least two different roles")
            for j, r in enumerate(names):
                if roles and r not in roles:
                    self.err(f"{loc}.roles[{j}]", f"unknown role {r!r}")
            action = spec.get("action", "deny")
            if action not in ("deny", "warn"):
                self.err(f"{loc}.action", f"must be deny or warn, not {action!r}")
                action = "deny"
            cid = str(spec.get("id") or "+".join(sorted(names)))
            out.append(Conflict(cid, frozenset(names), action, str(spec.get("reason") or "")))
        return out

    def reviewers(self, data: Any, roles: dict[str, Role]) -> Reviewers | None:
        """``reviewers:``: ``privacy_officer: {group: {dn: ...}}`` and ``scopes:``, a list of
        ``{id, group, departments, roles}``."""
        if data is None:
            return None
        if not isinstance(data, dict):
            self.err("reviewers", "must be a mapping with privacy_officer and scopes")
            return None
        self._unknown_keys("reviewers", data, REVIEWERS_KEYS)
        officer = data.get("privacy_officer")
        po: GroupRef | None = None
        if not isinstance(officer, dict) or "group" not in officer:
            self.err("reviewers.privacy_officer", "required: a mapping with group: {dn: ...} (receives "
                                                   "escalations and items no scope covers)")
        else:
            self._unknown_keys("reviewers.privacy_officer", officer, {"group"})
            po = self.group_ref("reviewers.privacy_officer.group", officer.get("group"))
        raw = data.get("scopes")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            self.err("reviewers.scopes", "must be a list")
            raw = []
        scopes: list[ReviewerScope] = []
        ids: dict[str, int] = {}
        for i, spec in enumerate(raw):
            loc = f"reviewers.scopes[{i}]"
            if not isinstance(spec, dict):
                self.err(loc, "must be a mapping with id, group and departments and/or roles")
                continue
            self._unknown_keys(loc, spec, REVIEWER_SCOPE_KEYS)
            sid = spec.get("id")
            if not isinstance(sid, str) or not RULE_ID.match(sid) or sid == PRIVACY_OFFICER:
                self.err(f"{loc}.id", "required: letters, digits, '.', '_' or '-' (not "
                                      f"{PRIVACY_OFFICER!r}, the privacy officer's queue)")
                sid = f"#{i}"
            elif sid in ids:
                self.err(f"{loc}.id", f"duplicate reviewer scope id {sid!r} (also reviewers.scopes[{ids[sid]}])")
            ids[sid] = i
            group = self.group_ref(f"{loc}.group", spec.get("group")) if "group" in spec else None
            if "group" not in spec:
                self.err(f"{loc}.group", "required (dn: or id:): the reviewers' directory group")
            depts = self._str_list(f"{loc}.departments", spec.get("departments"))
            role_names = self._str_list(f"{loc}.roles", spec.get("roles"))
            for j, r in enumerate(role_names):
                if roles and r not in roles:
                    self.err(f"{loc}.roles[{j}]", f"unknown role {r!r} (defined: {', '.join(sorted(roles))})")
            if not depts and not role_names:
                self.err(loc, "give departments and/or roles: what this group reviews")
            if group is not None:
                scopes.append(ReviewerScope(sid, group, tuple(depts), tuple(role_names),
                                            str(spec.get("description") or "")))
        if po is None:
            return None
        return Reviewers(po, tuple(scopes))
