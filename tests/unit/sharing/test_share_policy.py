"""The sharing section of the policy (validation, located errors) and the share decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.core.permissions import Permission
from bridge.policy.loader import PolicyError, load_policy, parse_policy
from bridge.policy.model import GroupRef
from bridge.policy.sharing import DEFAULT_REFUSED_MODALITIES, DeidOption, PrivateTag
from bridge.sharing.policy import (
    ExternalRecipient,
    InternalGroup,
    InternalUser,
    ShareRequest,
    decide_share,
    email_domain,
)

BASE = """
version: 1
roles:
  radiologist: {description: r, permissions: [view, download, share]}
  resident: {description: r, permissions: [view, share]}
  clinician: {description: c, permissions: [view]}
rules:
  - id: r1
    group: {dn: "CN=Radiology,OU=Groups,DC=h,DC=t"}
    roles: [radiologist]
"""

SHARING = """
sharing:
  purposes: [TREAT, HRESCH]
  legal_bases: ["GDPR Art. 6(1)(e) + Art. 9(2)(h)", "GDPR Art. 6(1)(a) + Art. 9(2)(a)"]
  transfer_bases: ["GDPR Art. 46(2)(c) standard contractual clauses"]
  deidentification:
    profile: basic
    options: [retain-longitudinal-modified-dates, clean-descriptors]
    keep_private:
      - {group: "0029", creator: "SIEMENS CSA HEADER", element: "08"}
  rules:
    - id: colleagues
      kind: internal
      to:
        groups: [{dn: "CN=Cardiology,OU=Groups,DC=h,DC=t"}]
        users: [{id: "6f9619ff-8b86-d011-b42d-00c04fc964ff"}]
      permissions: [view, download]
      max_lifetime: 7d
      deidentify: false
    - id: tumour-board
      kind: external
      to:
        institutions: [University Hospital Northgate]
        email_domains: [northgate.example]
      from_roles: [radiologist]
      max_lifetime: 72h
      max_uses: 10
      purposes: [TREAT]
    - id: research
      kind: external
      to: {email_domains: [northgate.example]}
      max_lifetime: 30d
      max_uses: 100
      purposes: [HRESCH]
"""


def policy(sharing: str = SHARING):  # type: ignore[no-untyped-def]
    return parse_policy(BASE + sharing, "p.yaml").sharing


def errors(sharing: str) -> dict[str, str]:
    with pytest.raises(PolicyError) as ei:
        parse_policy(BASE + sharing, "p.yaml")
    assert str(ei.value).startswith("p.yaml: ")
    return dict(ei.value.problems)


# --- the section ----------------------------------------------------------------------------------


def test_the_section_parses_with_its_defaults() -> None:
    pol = policy()
    assert [r.id for r in pol.rules] == ["colleagues", "tumour-board", "research"]
    colleagues, board, _ = pol.rules
    assert colleagues.deidentify is False and colleagues.permissions == {Permission.VIEW, Permission.DOWNLOAD}
    assert colleagues.max_lifetime_seconds == 7 * 86400 and colleagues.max_uses is None
    assert board.deidentify is True and board.max_lifetime_seconds == 72 * 3600 and board.max_uses == 10
    assert board.permissions == {Permission.VIEW}
    assert pol.deidentification.options == {DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
                                            DeidOption.CLEAN_DESCRIPTORS}
    assert pol.deidentification.keep_private == (PrivateTag(0x0029, "SIEMENS CSA HEADER", 0x08),)
    assert pol.deidentification.refuse_modalities_without_bia == set(DEFAULT_REFUSED_MODALITIES)
    assert "DE" in pol.home_countries and "US" not in pol.home_countries


def test_no_section_means_no_sharing() -> None:
    assert parse_policy(BASE, "p.yaml").sharing is None
    d = decide_share(None, {"share"}, InternalGroup("CN=X,DC=h"), ShareRequest("TREAT", "b", 60))
    assert not d.allowed and "no sharing section" in d.reason


def test_the_example_policy_has_a_valid_sharing_section() -> None:
    pol = load_policy(Path(__file__).parents[3] / "examples" / "policy.yaml").sharing
    assert pol is not None and any(r.kind == "external" for r in pol.rules)
    assert all(r.deidentify for r in pol.rules if r.kind == "external")


def test_an_external_rule_without_deidentification_is_refused_by_validation() -> None:
    errs = errors(SHARING.replace("      max_uses: 10\n", "      max_uses: 10\n      deidentify: false\n"))
    assert "must be de-identified" in errs["sharing.rules[1].deidentify"]
    # another spelling of false is not a way around it either
    errs = errors(SHARING.replace("      max_uses: 10\n", "      max_uses: 10\n      deidentify: \"no\"\n"))
    assert "true or false" in errs["sharing.rules[1].deidentify"]


def test_purposes_and_legal_bases_are_required() -> None:
    bases = '  legal_bases: ["GDPR Art. 6(1)(e) + Art. 9(2)(h)", "GDPR Art. 6(1)(a) + Art. 9(2)(a)"]\n'
    errs = errors(SHARING.replace("  purposes: [TREAT, HRESCH]\n", "").replace(bases, "  legal_bases: []\n"))
    assert "required" in errs["sharing.purposes"]
    assert "at least one" in errs["sharing.legal_bases"]


@pytest.mark.parametrize(("change", "where", "text"), [
    (("profile: basic", "profile: full"), "sharing.deidentification.profile", "unknown profile"),
    (("options: [retain-longitudinal-modified-dates, clean-descriptors]", "options: [retain-uids]"),
     "sharing.deidentification.options[0]", "always remaps UIDs"),
    (("options: [retain-longitudinal-modified-dates, clean-descriptors]", "options: [retain-dates]"),
     "sharing.deidentification.options[0]", "unknown option"),
    (("options: [retain-longitudinal-modified-dates, clean-descriptors]",
      "options: [retain-longitudinal-modified-dates, retain-longitudinal-full-dates]"),
     "sharing.deidentification.options", "choose one"),
    (('{group: "0029", creator: "SIEMENS CSA HEADER", element: "08"}',
      '{group: "0028", creator: "X", element: "08"}'), "sharing.deidentification.keep_private[0].group",
     "not a private group"),
    (('{group: "0029", creator: "SIEMENS CSA HEADER", element: "08"}',
      '{group: 29, creator: "X", element: "08"}'), "sharing.deidentification.keep_private[0].group", "hexadecimal"),
    (("max_lifetime: 72h", "max_lifetime: 3 days"), "sharing.rules[1].max_lifetime", "duration"),
    (("max_lifetime: 72h", "max_lifetime: 0h"), "sharing.rules[1].max_lifetime", "duration"),
    (("max_uses: 10", "max_uses: 0"), "sharing.rules[1].max_uses", "positive"),
    (("max_uses: 10", "max_uses: true"), "sharing.rules[1].max_uses", "positive"),
    (("from_roles: [radiologist]", "from_roles: [radiologst]"), "sharing.rules[1].from_roles[0]", "unknown role"),
    (("from_roles: [radiologist]", "from_roles: [clinician]"), "sharing.rules[1].from_roles[0]",
     "does not hold the 'share' permission"),
    (("permissions: [view, download]", "permissions: [view, delete]"), "sharing.rules[0].permissions[1]",
     "only view and download"),
    (("permissions: [view, download]", "permissions: [download]"), "sharing.rules[0].permissions", "include view"),
    (("permissions: [view, download]", "permissions: [view, dowload]"), "sharing.rules[0].permissions[1]",
     "unknown permission"),
    (("email_domains: [northgate.example]\n      from", "email_domains: [\"@northgate.example\"]\n      from"),
     "sharing.rules[1].to.email_domains[0]", "not a DNS domain"),
    (("kind: internal", "kind: intern"), "sharing.rules[0].kind", "internal or external"),
    (("    - id: research", "    - id: colleagues"), "sharing.rules[2].id", "duplicate"),
    (("purposes: [TREAT]\n", "purposes: [ETREAT]\n"), "sharing.rules[1].purposes[0]", "not in sharing.purposes"),
    (('groups: [{dn: "CN=Cardiology,OU=Groups,DC=h,DC=t"}]', "groups: [Cardiology]"),
     "sharing.rules[0].to.groups[0]", "ambiguous"),
    (('users: [{id: "6f9619ff-8b86-d011-b42d-00c04fc964ff"}]', "users: [rad.alice]"),
     "sharing.rules[0].to.users[0]", "bare user name"),
    (('users: [{id: "6f9619ff-8b86-d011-b42d-00c04fc964ff"}]', 'users: [{id: "rad.alice"}]'),
     "sharing.rules[0].to.users[0].id", "not a GUID"),
])
def test_each_error_is_located(change: tuple[str, str], where: str, text: str) -> None:
    assert change[0] in SHARING
    errs = errors(SHARING.replace(change[0], change[1], 1))
    assert text in errs.get(where, ""), errs


def test_unknown_keys_are_refused_everywhere() -> None:
    text = SHARING.replace("  purposes: [TREAT, HRESCH]\n", "  purposes: [TREAT, HRESCH]\n  purpose: [X]\n")
    text = text.replace("    profile: basic\n", "    profile: basic\n    opts: []\n")
    text = text.replace("      max_uses: 10\n", "      max_uses: 10\n      max_use: 3\n")
    text = text.replace("        institutions: [University", "        users: []\n        institutions: [University")
    errs = errors(text)
    assert {"sharing.purpose", "sharing.deidentification.opts", "sharing.rules[1].max_use",
            "sharing.rules[1].to.users"} <= set(errs)
    assert all("unknown key" in errs[k] for k in ("sharing.purpose", "sharing.rules[1].max_use"))


def test_all_errors_of_the_section_are_reported_together() -> None:
    errs = errors(SHARING.replace("max_lifetime: 72h", "max_lifetime: soon").replace("max_uses: 100", "max_uses: -1"))
    assert {"sharing.rules[1].max_lifetime", "sharing.rules[2].max_uses"} <= set(errs)


# --- the decision ---------------------------------------------------------------------------------

NORTHGATE = ExternalRecipient("Dr Ada Nkemelu", "University Hospital Northgate", "ada@northgate.example", "DE")
TREAT = ShareRequest("TREAT", "GDPR Art. 6(1)(e) + Art. 9(2)(h)", 24 * 3600, max_uses=5)
RADIOLOGIST = {"view", "download", "share"}


def test_an_external_share_within_the_rule_is_allowed_with_the_profile() -> None:
    d = decide_share(policy(), RADIOLOGIST, NORTHGATE, TREAT, ("radiologist",))
    assert d.allowed and d.rule == "tumour-board" and d.deidentify
    assert d.profile is not None and DeidOption.CLEAN_DESCRIPTORS in d.profile.options
    assert d.max_uses == 5 and d.lifetime_seconds == 24 * 3600 and d.permissions == {Permission.VIEW}


def test_an_external_share_without_deidentification_is_refused_by_policy() -> None:
    d = decide_share(policy(), RADIOLOGIST, NORTHGATE, ShareRequest(**{**TREAT.__dict__, "deidentify": False}),
                     ("radiologist",))
    assert not d.allowed and "without de-identification is refused" in d.reason and d.rule == "tumour-board"


def test_the_sharer_needs_the_share_permission() -> None:
    d = decide_share(policy(), {"view", "download"}, NORTHGATE, TREAT, ("radiologist",))
    assert not d.allowed and "'share'" in d.reason
    d = decide_share(policy(), {"view", "shar"}, NORTHGATE, TREAT, ("radiologist",))
    assert not d.allowed


def test_purpose_and_legal_basis_are_required_and_checked() -> None:
    pol = policy()
    for req, why in [
        (ShareRequest("", TREAT.legal_basis, 3600), "purpose of use is required"),
        (ShareRequest("treat", TREAT.legal_basis, 3600), "not allowed"),
        (ShareRequest("TREAT", "", 3600), "legal basis is required"),
        (ShareRequest("TREAT", "because", 3600), "not in sharing.legal_bases"),
    ]:
        d = decide_share(pol, RADIOLOGIST, NORTHGATE, req, ("radiologist",))
        assert not d.allowed and why in d.reason and "tumour-board" in d.reason, (req, d.reason)


def test_a_recipient_abroad_needs_an_allowed_transfer_basis() -> None:
    abroad = ExternalRecipient("Dr B", "University Hospital Northgate", "b@northgate.example", "us")
    d = decide_share(policy(), RADIOLOGIST, abroad, TREAT, ("radiologist",))
    assert not d.allowed and "transfer basis is required" in d.reason
    wrong = ShareRequest(**{**TREAT.__dict__, "transfer_basis": "adequacy, probably"})
    d = decide_share(policy(), RADIOLOGIST, abroad, wrong, ("radiologist",))
    assert "not in sharing.transfer_bases" in d.reason
    ok = ShareRequest(**{**TREAT.__dict__, "transfer_basis": "GDPR Art. 46(2)(c) standard contractual clauses"})
    assert decide_share(policy(), RADIOLOGIST, abroad, ok, ("radiologist",)).allowed
    nowhere = ExternalRecipient("Dr B", "University Hospital Northgate", "b@northgate.example", "Germany")
    assert "alpha-2" in decide_share(policy(), RADIOLOGIST, nowhere, TREAT, ("radiologist",)).reason


def test_lifetime_and_uses_are_capped_by_the_rule() -> None:
    pol = policy()
    long = ShareRequest(**{**TREAT.__dict__, "lifetime_seconds": 72 * 3600 + 1})
    d = decide_share(pol, RADIOLOGIST, NORTHGATE, long, ("radiologist",))
    assert not d.allowed and "exceeds the maximum" in d.reason
    for uses in (11, None, 0, -1):
        d = decide_share(pol, RADIOLOGIST, NORTHGATE, ShareRequest(**{**TREAT.__dict__, "max_uses": uses}),
                         ("radiologist",))
        # None takes the rule's 10; the others are refused
        assert d.allowed == (uses is None), (uses, d.reason)
    assert not decide_share(pol, RADIOLOGIST, NORTHGATE, ShareRequest(**{**TREAT.__dict__, "lifetime_seconds": 0}),
                            ("radiologist",)).allowed


def test_from_roles_limits_who_may_share_and_another_rule_may_still_allow() -> None:
    pol = policy()
    d = decide_share(pol, {"view", "share"}, NORTHGATE, TREAT, ("resident",))
    assert not d.allowed and "only radiologist" in d.reason and d.rule == "tumour-board"
    research = ShareRequest("HRESCH", "GDPR Art. 6(1)(a) + Art. 9(2)(a)", 20 * 86400, max_uses=50)
    d = decide_share(pol, {"view", "share"}, NORTHGATE, research, ("resident",))
    assert d.allowed and d.rule == "research"


def test_an_external_share_cannot_grant_download_beyond_the_rule() -> None:
    req = ShareRequest(**{**TREAT.__dict__, "permissions": frozenset({Permission.VIEW, Permission.DOWNLOAD})})
    d = decide_share(policy(), RADIOLOGIST, NORTHGATE, req, ("radiologist",))
    assert not d.allowed and "may not grant download" in d.reason
    req = ShareRequest(**{**TREAT.__dict__, "permissions": frozenset({Permission.DOWNLOAD})})
    assert not decide_share(policy(), RADIOLOGIST, NORTHGATE, req, ("radiologist",)).allowed


@pytest.mark.parametrize("email", [
    "ada@evil.example", "ada@northgate.example.evil.example", "ada@sub.northgate.example",
    "ada@northgate.example.", "ada@evil.example@northgate.example", " ada@northgate.example",
    "ada@northgate.exampl\u0435", "ada@northgate.example\n", "northgate.example",
])
def test_look_alike_email_domains_do_not_match(email: str) -> None:
    who = ExternalRecipient("X", "Some Clinic", email, "DE")
    d = decide_share(policy(), RADIOLOGIST, who, TREAT, ("radiologist",))
    assert not d.allowed and "no sharing rule allows" in d.reason


def test_domain_and_institution_compare_without_case() -> None:
    assert email_domain("Ada@NorthGate.Example") == "northgate.example"
    who = ExternalRecipient("X", "university hospital NORTHGATE", "X@NorthGate.Example", "DE")
    assert decide_share(policy(), RADIOLOGIST, who, TREAT, ("radiologist",)).allowed
    who = ExternalRecipient("X", "University Hospital Northgate (annex)", "x@northgate.example", "DE")
    d = decide_share(policy(), RADIOLOGIST, who, TREAT, ("radiologist",))
    assert d.rule != "tumour-board"  # only the research rule (domains only) names this recipient


def test_internal_shares_by_group_user_and_membership() -> None:
    pol = policy()
    req = ShareRequest("TREAT", TREAT.legal_basis, 3 * 86400, permissions=frozenset({Permission.VIEW,
                                                                                     Permission.DOWNLOAD}))
    member = InternalUser("CN=Bob,OU=Staff,DC=h,DC=t", "u-bob", (GroupRef(dn="cn=cardiology, ou=groups,dc=h,dc=t"),))
    d = decide_share(pol, RADIOLOGIST, member, req)
    assert d.allowed and d.rule == "colleagues" and not d.deidentify and d.profile is None
    named = InternalUser("CN=Eve,OU=Staff,DC=h,DC=t", "6F9619FF-8B86-D011-B42D-00C04FC964FF")
    assert decide_share(pol, RADIOLOGIST, named, req).allowed
    assert decide_share(pol, RADIOLOGIST, InternalGroup("CN=Cardiology,OU=Groups,DC=h,DC=t"), req).allowed
    # a same-named group elsewhere, or no group at all, is not the group of the rule
    stranger = InternalUser("CN=Mal,OU=Staff,DC=h,DC=t", "u-mal", (GroupRef(dn="CN=Cardiology,OU=External,DC=h,DC=t"),))
    assert not decide_share(pol, RADIOLOGIST, stranger, req).allowed
    assert not decide_share(pol, RADIOLOGIST, InternalGroup("CN=Cardiology,OU=External,DC=h,DC=t"), req).allowed
    # an internal share may still ask for de-identification
    d = decide_share(pol, RADIOLOGIST, member, ShareRequest(**{**req.__dict__, "deidentify": True}))
    assert d.allowed and d.deidentify and d.profile is not None
    # an internal recipient does not match an external rule, nor the reverse
    assert not decide_share(pol, RADIOLOGIST, InternalUser("CN=Ada,DC=northgate,DC=example", "x"), TREAT).allowed


def test_a_rule_that_mandates_deidentification_internally_cannot_be_bypassed() -> None:
    pol = policy(SHARING.replace("      deidentify: false\n", "      deidentify: true\n"))
    member = InternalGroup("CN=Cardiology,OU=Groups,DC=h,DC=t")
    req = ShareRequest("TREAT", TREAT.legal_basis, 3600, deidentify=False)
    d = decide_share(pol, RADIOLOGIST, member, req)
    assert not d.allowed and "mandatory" in d.reason


def test_policy_check_summarises_the_sharing_section() -> None:
    from click.testing import CliRunner

    from bridge.cli import main

    res = CliRunner().invoke(main, ["policy", "check", str(Path(__file__).parents[3] / "examples" / "policy.yaml")])
    assert res.exit_code == 0, res.output
    assert "sharing: 3 rules" in res.stdout
    assert "share rule partner-second-opinion: external -> institutions Northgate University Hospital; " \
           "e-mail domains northgate-uh.example; view; max 3d, 20 uses; de-identified" in res.stdout
    assert "de-identification: PS3.15 Annex E basic + clean-descriptors" in res.stdout


def test_a_rule_with_institutions_and_domains_needs_both() -> None:
    """The institution is what the sharer types; with both lists, the address must be at a listed domain too."""
    typed = ExternalRecipient("X", "University Hospital Northgate", "x@gmail.example", "DE")
    d = decide_share(policy(), RADIOLOGIST, typed, TREAT, ("radiologist",))
    assert not d.allowed and "no sharing rule allows" in d.reason
    only_domains = policy(SHARING.replace("        institutions: [University Hospital Northgate]\n", ""))
    assert decide_share(only_domains, RADIOLOGIST, NORTHGATE, TREAT, ("radiologist",)).allowed
    only_institutions = policy(SHARING.replace("        email_domains: [northgate.example]\n      from", "      from"))
    assert decide_share(only_institutions, RADIOLOGIST, typed, TREAT, ("radiologist",)).allowed


def test_an_internal_share_becomes_a_per_study_grant_of_kind_share() -> None:
    from bridge.core.grants import Grant, StudyInfo

    req = ShareRequest("TREAT", TREAT.legal_basis, 3600, permissions=frozenset({Permission.VIEW}))
    d = decide_share(policy(), RADIOLOGIST, InternalGroup("CN=Cardiology,OU=Groups,DC=h,DC=t"), req)
    grant = d.grant("1.2.3.4", now=1_000_000)
    assert grant == Grant(permissions=frozenset({"view"}), studies=frozenset({"1.2.3.4"}), kind="share",
                          exp=1_000_000 + 3600)
    assert grant.covers(StudyInfo("o", "1.2.3.4", "p", "Cardiology", "x"))
    assert not grant.covers(StudyInfo("o", "1.2.3.5", "p", "Cardiology", "x"))
    refused = decide_share(policy(), {"view"}, InternalGroup("CN=Cardiology,OU=Groups,DC=h,DC=t"), req)
    with pytest.raises(ValueError, match="refused"):
        refused.grant("1.2.3.4", now=0)
