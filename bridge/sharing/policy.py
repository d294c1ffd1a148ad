"""The share decision: may this sharer share a study with this recipient under these terms?

A pure function of the policy's ``sharing:`` section (bridge/policy/sharing.py) and the request, so
the share endpoints, the CLI and the tests ask the same question the same way, and every answer
names the rule (or the missing one) for the audit trail.

Why the rules are tried in order and the first rule that allows wins, while a refusal names the
first rule that matched the recipient: two rules may cover the same recipient with different limits
(a 7-day rule for treatment, a 90-day one for research); the request is allowed if one of them
allows it, and when none does the sharer learns which limit of the closest rule was exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.core.grants import Grant
from bridge.core.permissions import Permission, expand
from bridge.directory.model import normalize_dn
from bridge.policy.model import GroupRef
from bridge.policy.sharing import DeidProfile, ShareRule, SharingPolicy


@dataclass(frozen=True)
class InternalUser:
    """A directory user: DN and stable id as the directory returns them, and the groups (direct and
    nested, as the directory snapshot resolves them) the user belongs to."""

    dn: str
    id: str = ""
    groups: tuple[GroupRef, ...] = ()


@dataclass(frozen=True)
class InternalGroup:
    """A directory group as the recipient (every member gets the share)."""

    dn: str
    id: str = ""


@dataclass(frozen=True)
class ExternalRecipient:
    """Someone outside the hospital, recorded at creation: name, institution, e-mail and the country
    the study goes to (ISO 3166-1 alpha-2; decides whether a GDPR transfer basis is needed)."""

    name: str
    institution: str
    email: str
    country: str


Recipient = InternalUser | InternalGroup | ExternalRecipient


@dataclass(frozen=True)
class ShareRequest:
    """What the sharer asks for. ``deidentify`` None: the rule's default (always yes externally)."""

    purpose: str
    legal_basis: str
    lifetime_seconds: int
    max_uses: int | None = None
    permissions: frozenset[Permission] = frozenset({Permission.VIEW})
    deidentify: bool | None = None
    transfer_basis: str | None = None


@dataclass(frozen=True)
class ShareDecision:
    """``allowed`` with the rule that allowed it, or refused with the reason (naming the rule or the
    policy key). On allow, the terms to record: de-identification and its profile, the grant's
    permissions, lifetime and use limit (the request's, within the rule's)."""

    allowed: bool
    reason: str
    rule: str | None = None
    deidentify: bool = True
    profile: DeidProfile | None = None
    permissions: frozenset[Permission] = field(default_factory=frozenset)
    lifetime_seconds: int = 0
    max_uses: int | None = None

    def grant(self, study_uid: str, now: int) -> Grant:
        """The internal share as a token grant: kind ``share``, this one study, the decided
        permissions (expanded), ending `lifetime_seconds` after `now` (enforced by the PACS)."""
        if not self.allowed:
            raise ValueError(f"share refused, no grant: {self.reason}")
        return Grant(permissions=frozenset(p.value for p in expand(self.permissions)),
                     studies=frozenset({study_uid}), kind="share", exp=int(now) + self.lifetime_seconds)


def _refuse(reason: str, rule: str | None = None) -> ShareDecision:
    return ShareDecision(False, reason, rule)


def email_domain(email: str) -> str | None:
    """The domain of one plain address, lower case; None for anything else (two '@', blanks, a
    trailing dot, non-ASCII: look-alike domains never match by accident)."""
    if not isinstance(email, str) or email != email.strip() or not email.isascii() or email.count("@") != 1:
        return None
    local, domain = email.split("@")
    if not local or not domain or domain.endswith(".") or any(c.isspace() for c in email):
        return None
    return domain.lower()


def _ref_matches(ref: GroupRef, dn: str, oid: str) -> bool:
    if ref.id:
        return bool(oid) and oid.strip().lower() == ref.id.lower()
    return bool(dn) and normalize_dn(dn) == normalize_dn(ref.dn or "")


def recipient_matches(rule: ShareRule, recipient: Recipient) -> bool:
    """Does `rule` name this recipient? Internal: the user, one of the user's groups, or the group
    itself; external: the institution (case-insensitive, exact) and/or the e-mail domain (exact: a
    subdomain is another organisation); a rule listing both needs both."""
    if isinstance(recipient, ExternalRecipient):
        if rule.kind != "external":
            return False
        inst = recipient.institution.strip().casefold()
        at_institution = bool(inst) and any(inst == i.strip().casefold() for i in rule.institutions)
        domain = email_domain(recipient.email)
        at_domain = domain is not None and domain in rule.email_domains
        if rule.institutions and rule.email_domains:
            # the institution is what the sharer typed: the address must be at a listed domain too
            return at_institution and at_domain
        return at_institution or at_domain
    if rule.kind != "internal":
        return False
    if isinstance(recipient, InternalGroup):
        return any(_ref_matches(g, recipient.dn, recipient.id) for g in rule.groups)
    if any(_ref_matches(GroupRef(dn=u.dn, id=u.id), recipient.dn, recipient.id) for u in rule.users):
        return True
    return any(_ref_matches(g, member.dn or "", member.id or "") for g in rule.groups for member in recipient.groups)


def _check(policy: SharingPolicy, rule: ShareRule, recipient: Recipient, req: ShareRequest) -> ShareDecision:
    where = f"sharing rule {rule.id!r}"
    allowed_purposes = rule.purposes or policy.purposes
    if not req.purpose:
        return _refuse(f"{where}: a purpose of use is required", rule.id)
    if req.purpose not in allowed_purposes:
        return _refuse(f"{where}: purpose {req.purpose!r} not allowed ({', '.join(allowed_purposes)})", rule.id)
    if not req.legal_basis:
        return _refuse(f"{where}: a legal basis is required (sharing.legal_bases)", rule.id)
    if req.legal_basis not in policy.legal_bases:
        return _refuse(f"{where}: legal basis {req.legal_basis!r} is not in sharing.legal_bases", rule.id)
    if isinstance(recipient, ExternalRecipient):
        country = recipient.country.strip().upper()
        if len(country) != 2 or not country.isalpha():
            return _refuse(f"{where}: the recipient's country must be an ISO 3166-1 alpha-2 code", rule.id)
        if country not in policy.home_countries:
            if not req.transfer_basis:
                return _refuse(f"{where}: recipient in {country}, outside sharing.home_countries: a transfer "
                               "basis is required (GDPR Chapter V)", rule.id)
            if req.transfer_basis not in policy.transfer_bases:
                return _refuse(f"{where}: transfer basis {req.transfer_basis!r} is not in sharing.transfer_bases",
                               rule.id)
    deidentify = rule.deidentify if req.deidentify is None else req.deidentify
    if isinstance(recipient, ExternalRecipient) and not deidentify:
        return _refuse(f"{where}: an external share without de-identification is refused by policy", rule.id)
    if rule.deidentify and not deidentify:
        return _refuse(f"{where}: de-identification is mandatory under this rule", rule.id)
    perms = frozenset(req.permissions)
    if Permission.VIEW not in perms:
        return _refuse(f"{where}: a share grants view (and optionally download)", rule.id)
    if not perms <= rule.permissions:
        extra = ", ".join(sorted(p.value for p in perms - rule.permissions))
        return _refuse(f"{where}: may not grant {extra}", rule.id)
    if req.lifetime_seconds <= 0:
        return _refuse(f"{where}: the lifetime must be positive", rule.id)
    if req.lifetime_seconds > rule.max_lifetime_seconds:
        return _refuse(f"{where}: lifetime {req.lifetime_seconds}s exceeds the maximum "
                       f"{rule.max_lifetime_seconds}s", rule.id)
    uses = req.max_uses if req.max_uses is not None else rule.max_uses
    if uses is not None and uses < 1:
        return _refuse(f"{where}: the number of uses must be positive", rule.id)
    if rule.max_uses is not None and (uses is None or uses > rule.max_uses):
        return _refuse(f"{where}: {uses} uses exceed the maximum {rule.max_uses}", rule.id)
    return ShareDecision(True, f"allowed by {where}", rule.id, deidentify,
                         policy.deidentification if deidentify else None, perms, req.lifetime_seconds, uses)


def decide_share(
    policy: SharingPolicy | None,
    sharer_permissions: frozenset[Permission] | set[Permission] | list[str],
    recipient: Recipient,
    request: ShareRequest,
    sharer_roles: tuple[str, ...] | frozenset[str] = (),
) -> ShareDecision:
    """Allow or refuse one share. `sharer_permissions` are the sharer's (for the study being shared:
    the caller passes the permissions of the grant that covers it); `sharer_roles` their role names
    (for rules with ``from_roles``)."""
    if policy is None:
        return _refuse("the policy has no sharing section: sharing is disabled")
    try:
        held = expand(sharer_permissions)
    except ValueError as exc:
        return _refuse(f"sharer permissions: {exc}")
    if Permission.SHARE not in held:
        return _refuse("the sharer does not hold the 'share' permission")
    matched: ShareDecision | None = None
    for rule in policy.rules:
        if not recipient_matches(rule, recipient):
            continue
        if rule.from_roles and not set(rule.from_roles) & set(sharer_roles):
            decision = _refuse(f"sharing rule {rule.id!r}: only {', '.join(rule.from_roles)} may share under it",
                               rule.id)
        else:
            decision = _check(policy, rule, recipient, request)
        if decision.allowed:
            return decision
        matched = matched or decision
    if matched is not None:
        return matched
    return _refuse(f"no sharing rule allows {_describe(recipient)}")


def _describe(recipient: Recipient) -> str:
    if isinstance(recipient, ExternalRecipient):
        return f"external recipient at {recipient.institution!r} <{recipient.email}>"
    if isinstance(recipient, InternalGroup):
        return f"internal group {recipient.dn or recipient.id}"
    return f"internal user {recipient.dn or recipient.id}"
