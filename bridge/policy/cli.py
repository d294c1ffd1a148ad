"""`pacs-bridge policy check FILE` and `pacs-bridge policy explain USER`."""

from __future__ import annotations

import json
from typing import Any

import click

from bridge.errors import InputError, UnavailableError
from bridge.policy.loader import load_policy
from bridge.policy.model import Policy


@click.group("policy")
def policy_cli() -> None:
    """The access policy: directory groups -> roles -> PACS permissions."""


@policy_cli.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def check(path: str) -> None:
    """Validate the policy file PATH; list every error (exit 2) or summarise it (exit 0)."""
    pol = load_policy(path)  # PolicyError lists every problem: exit 2
    click.echo(f"{path}: OK ({len(pol.roles)} roles, {len(pol.rules)} rules, {len(pol.conflicts)} conflicts)")
    for role in pol.roles.values():
        perms = ", ".join(sorted(p.value for p in role.permissions))
        scope = f"  scope {role.scope()}" if role.scope() else ""
        click.echo(f"  role {role.name}: {perms}{scope}")
    for rule in pol.rules:
        click.echo(f"  rule {rule.id}: {rule.group} -> {', '.join(rule.roles)}")
    _sharing_summary(pol)
    if pol.emergency is None:
        click.echo("  break-glass: none (no role may ask for emergency access)")
    else:
        perms = ", ".join(sorted(p.value for p in pol.emergency.effective_permissions))
        click.echo(f"  break-glass: {perms} on one study or patient for {pol.emergency.lifetime_minutes} min; "
                   f"roles {', '.join(sorted(pol.emergency_roles())) or '(none)'}")
    _reviewers_summary(pol)


def _reviewers_summary(pol: Policy) -> None:
    if pol.reviewers is None:
        click.echo("  reviewers: none (no access review can be run)")
        return
    click.echo(f"  reviewers: privacy officer {pol.reviewers.privacy_officer}")
    for s in pol.reviewers.scopes:
        what = "; ".join(x for x in (f"departments {', '.join(s.departments)}" if s.departments else "",
                                     f"roles {', '.join(s.roles)}" if s.roles else "") if x)
        click.echo(f"  reviewer {s.id}: {s.group} reviews {what}")


def _sharing_summary(pol: Policy) -> None:
    sharing = pol.sharing
    if sharing is None:
        click.echo("  sharing: none (no study can be shared)")
        return
    click.echo(f"  sharing: {len(sharing.rules)} rules; purposes {', '.join(sharing.purposes)}; "
               f"{len(sharing.legal_bases)} legal bases, {len(sharing.transfer_bases)} transfer bases")
    for r in sharing.rules:
        to = "; ".join(part for part in (
            f"groups {', '.join(map(str, r.groups))}" if r.groups else "",
            f"users {', '.join(map(str, r.users))}" if r.users else "",
            f"institutions {', '.join(r.institutions)}" if r.institutions else "",
            f"e-mail domains {', '.join(r.email_domains)}" if r.email_domains else "",
        ) if part)
        hours = r.max_lifetime_seconds / 3600
        life = f"{hours:g}h" if hours < 48 or hours % 24 else f"{hours / 24:g}d"
        uses = f", {r.max_uses} uses" if r.max_uses else ""
        perms = ", ".join(sorted(p.value for p in r.permissions))
        deid = "de-identified" if r.deidentify else "identified"
        click.echo(f"  share rule {r.id}: {r.kind} -> {to}; {perms}; max {life}{uses}; {deid}")
    profile = sharing.deidentification
    options = "".join(f" + {o.value}" for o in sorted(profile.options))
    keep = f"; keeps {', '.join(map(str, profile.keep_private))}" if profile.keep_private else ""
    refuse = ", ".join(sorted(profile.refuse_modalities_without_bia))
    click.echo(f"  de-identification: PS3.15 Annex E basic{options}{keep}; "
               f"refused without Burned In Annotation: {refuse}")


@policy_cli.command("explain")
@click.argument("username")
@click.option("--config", "-c", "config_path", envvar="PACS_BRIDGE_CONFIG", type=click.Path(dir_okay=False))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), help="overrides sync.policy_file")
@click.option("--json", "as_json", is_flag=True)
@click.option("--permission", help="answer: may the user do this (a PACS permission) ...")
@click.option("--department", default="", help="... on a study of this department (0008,1040)")
@click.option("--institution", default="", help="... of this institution (0008,0080)")
def explain(username: str, config_path: str | None, policy_path: str | None, as_json: bool,
            permission: str | None, department: str, institution: str) -> None:
    """Every role USERNAME gets, from which group and rule, the PACS grant each role becomes (its
    permissions in its scope, never merged with another role's), and any separation-of-duty conflict.
    With --permission: which grant allows it on a study of --department/--institution, or why none does.

    Reads the live directory (read-only); changes nothing."""
    from bridge.cli_common import load_settings
    from bridge.core.permissions import parse as parse_permission
    from bridge.directory.model import DirectoryUnavailable
    from bridge.directory.reader import reader_for
    from bridge.policy.evaluate import evaluate, pacs_grants

    settings = load_settings(config_path)
    path = policy_path or settings.sync.policy_file
    if not path:
        raise InputError("policy explain: no policy file (set sync.policy_file or pass --policy)")
    pol = load_policy(path)
    if permission is not None:
        try:
            parse_permission(permission)
        except ValueError as exc:
            raise InputError(f"policy explain: --permission: {exc}") from None
    try:
        snap = reader_for(settings.directory).read()
    except DirectoryUnavailable as exc:
        raise UnavailableError(f"policy explain: directory unavailable: {exc}",
                               subject=settings.directory.url) from exc
    user = snap.user_by_username(username)
    if user is None:
        raise InputError(f"policy explain: no user {username!r} in {settings.directory.url}", subject=username)
    ent = evaluate(snap, pol).entitlements[user.id]
    grants = pacs_grants(ent, pol)
    answer = _answer(grants, permission, department, institution) if permission is not None else None
    if as_json:
        click.echo(json.dumps({
            "user": {"id": user.id, "username": user.username, "dn": user.dn, "disabled": user.disabled},
            "roles": sorted(ent.roles),
            "grants": [{"role": g.role, "rule": g.rule_id, "group_dn": g.group_dn} for g in ent.grants],
            "conflicts": [{"id": h.conflict.id, "roles": sorted(h.roles), "action": h.conflict.action,
                           "reason": h.conflict.reason} for h in ent.conflicts],
            "denied": sorted(ent.denied),
            "groups": sorted(snap.groups[g].dn for g in snap.groups_of(user.id)),
            "pacs_grants": [g.to_claim() for g in grants],
            **({"answer": answer} if answer is not None else {}),
        }, indent=2))
        return
    click.echo(f"{user.username} ({user.display_name or '-'}) id {user.id}")
    click.echo(f"  dn: {user.dn}")
    if user.disabled:
        click.echo("  DISABLED in the directory: no role (leaver)")
    click.echo(f"  groups (incl. nested): {len(snap.groups_of(user.id))}")
    for gid in sorted(snap.groups_of(user.id), key=lambda g: snap.groups[g].dn):
        click.echo(f"    {snap.groups[gid].dn}")
    if not ent.grants and not user.disabled:
        click.echo("  no rule matches: no PACS role")
    for role in sorted({g.role for g in ent.grants}):
        mark = "DENIED (SoD)" if role in ent.denied else "granted"
        perms = ", ".join(sorted(p.value for p in pol.roles[role].effective_permissions))
        click.echo(f"  role {role} [{mark}] permissions: {perms}")
        for g in ent.grants_for(role):
            click.echo(f"    via rule {g.rule_id} on group {g.group_dn}")
    if grants:
        click.echo("  PACS grants (a request needs ONE grant holding its permissions and covering its study):")
    for grant in grants:
        click.echo(f"    {grant.describe()}: {', '.join(sorted(grant.permissions))}")
    if answer is not None:
        where = ", ".join(x for x in (department, institution) if x) or "any study"
        verdict = f"ALLOWED by {answer['grant']}" if answer["allowed"] else f"DENIED: {answer['reason']}"
        click.echo(f"  {permission} on {where}: {verdict}")
    for h in ent.conflicts:
        click.echo(f"  SoD conflict {h.conflict.id} ({h.conflict.action}): {', '.join(sorted(h.roles))}"
                   f"{' - ' + h.conflict.reason if h.conflict.reason else ''}")


def _answer(grants: tuple[Any, ...], permission: str, department: str, institution: str) -> dict[str, Any]:
    """Which grant allows ``permission`` on a study of ``department``/``institution`` (the PACS's rule:
    one grant holds it and covers the study), or why none does."""
    from bridge.core import grants as grants_mod

    study = grants_mod.StudyInfo("", "", "", department, institution)
    holders = grants_mod.holding(grants, (permission,))
    chosen = grants_mod.allows(holders, (), (study,))
    if chosen is not None:
        return {"allowed": True, "grant": chosen.describe()}
    why = grants_mod.why_not(holders, (study,)) if holders else f"no grant holds {permission}"
    return {"allowed": False, "reason": why}
