"""Test tokens with a department/institution scope, built in ONE place so a change of the token
format (format 2: the ``grants`` claim, one (permissions, scope) pair per role) is adapted here only.

Today the bridge double issues format 1 (``scopes``); the grant model reads ``grants``.  The token
carries whichever the double's claim builder produced, and a ``grants`` claim (one role grant with the
token's permissions and scope) when the builder did not make one, so the same tests hold before and
after the verifier switches to grants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bridge.core.permissions import Permission
from pacs_devstack.pacs_double import BridgeDouble


def scoped_claims(bridge: BridgeDouble, permissions: Iterable[Permission | str], *,
                  departments: Iterable[str] = (), institutions: Iterable[str] = (), role: str = "viewer-test",
                  **kwargs: Any) -> dict[str, Any]:
    deps, insts = list(departments), list(institutions)
    claims = bridge.claims(permissions, departments=deps, institutions=insts, roles=[role], **kwargs)
    if "grants" not in claims:
        scope = {k: v for k, v in (("departments", deps), ("institutions", insts)) if v}
        claims["grants"] = [{"kind": "role", "role": role, "permissions": list(claims["permissions"]),
                             "scope": scope}]
    return claims


def scoped_token(bridge: BridgeDouble, permissions: Iterable[Permission | str], *,
                 departments: Iterable[str] = (), institutions: Iterable[str] = (), **kwargs: Any) -> str:
    """A signed PACS token holding ``permissions`` within ``departments``/``institutions`` (none: everywhere)."""
    return bridge.ring.sign(scoped_claims(bridge, permissions, departments=departments,
                                          institutions=institutions, **kwargs))
