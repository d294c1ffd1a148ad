"""The format version of a PACS token, agreed between the bridge (which issues) and every
verifier (the Orthanc plugin, the bridge's own introspection).

Why: the claims will change (new scope kinds, new rules); a verifier that reads a token of a newer
format by the old rules could allow what the new format restricts.  So the bridge stamps
``CLAIM`` on every token, and a verifier refuses -- and logs, so the operator sees a plugin that
needs the newer bundle -- any token whose version it does not know, including a token without
one.  Bump ``CURRENT`` (and add it to ``UNDERSTOOD``) whenever the meaning of a claim changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bridge.core.errors import VerificationError

#: the claim carrying the version (namespaced, so no other issuer's claim is mistaken for it)
CLAIM = "pacs_bridge_token_format"
#: the version the bridge issues.  History: 1 = one merged ``permissions`` list + one ``scopes``
#: object (every role's permissions applied in every role's scope: the holes of issue 11 item 7);
#: 2 = ``grants``, one (permissions, scope) pair per role, share or break-glass grant
#: (:mod:`bridge.core.grants`), never merged
CURRENT = 2
#: the versions this verifier can read.  Not 1: its ``scopes`` claim would read as "no grant" here, and
#: a verifier that still read it would apply the merged permissions
UNDERSTOOD = frozenset({2})
#: where a refused version is logged (the Orthanc plugin forwards it to Orthanc's log)
LOGGER = "pacs_bridge.token_format"

_log = logging.getLogger(LOGGER)


def check(claims: Mapping[str, Any]) -> None:
    """Raise VerificationError (and log) unless the token's format version is one we understand.

    Only a plain integer counts: ``"1"``, ``1.0`` or ``true`` are another issuer's idea of a version.
    """
    value = claims.get(CLAIM)
    if type(value) is int and value in UNDERSTOOD:
        return
    shown = "missing" if value is None else f"{value!r}"[:40]
    _log.warning("refused a token: token format %s not understood (this verifier reads %s; "
                 "a newer bridge needs a newer plugin bundle)", shown, ", ".join(map(str, sorted(UNDERSTOOD))))
    raise VerificationError(f"token format {shown} not understood")
