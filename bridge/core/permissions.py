"""The one PACS permission vocabulary, shared by the policy, the token service and the verifier.

Kept close to the vocabulary Orthanc integrators know (orthanc-auth-service / the official
authorization plugin), so a role file reads the same everywhere.  Default deny: a request whose
route maps to no permission is refused, and a permission implies nothing else except where
``IMPLIES`` says so.

This module must stay importable by Debian's ``/usr/bin/python3`` inside Orthanc (stdlib only).
"""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    """What a role may do in the PACS."""

    VIEW = "view"               # studies, series, instances, previews, tags, QIDO-RS, WADO
    DOWNLOAD = "download"       # archives, media, raw DICOM files
    UPLOAD = "upload"           # POST /instances, STOW-RS
    DELETE = "delete"           # DELETE of any resource
    MODIFY = "modify"           # /modify on a resource
    ANONYMIZE = "anonymize"     # /anonymize on a resource
    SEND = "send"               # push to the configured modalities / peers / DICOMweb servers
    QUERY_RETRIEVE = "q-r-remote-modalities"  # C-FIND / C-MOVE / QIDO / WADO from a remote peer into this PACS
    SHARE = "share"             # external sharing under a data-sharing policy
    SETTINGS = "settings"       # tools, log level, changes feed
    AUDIT_LOGS = "audit-logs"   # read the audit trail
    ADMIN = "admin"             # plugins, system administration, jobs, defining network peers


ALL: frozenset[Permission] = frozenset(Permission)

#: a permission that carries another with it (downloading implies seeing what is downloaded).
#: Query/retrieve implies nothing: it brings studies in, and seeing them is a grant of its own.
IMPLIES: dict[Permission, frozenset[Permission]] = {
    Permission.DOWNLOAD: frozenset({Permission.VIEW}),
    Permission.MODIFY: frozenset({Permission.VIEW}),
    Permission.ANONYMIZE: frozenset({Permission.VIEW}),
    Permission.SEND: frozenset({Permission.VIEW}),
    Permission.SHARE: frozenset({Permission.VIEW}),
}


class UnknownPermissionError(ValueError):
    """A name that is not in the vocabulary (named in the message, with the valid names)."""


def parse(name: str) -> Permission:
    try:
        return Permission(name)
    except ValueError:
        valid = ", ".join(p.value for p in Permission)
        raise UnknownPermissionError(f"unknown permission {name!r}; valid: {valid}") from None


def expand(perms: set[Permission] | frozenset[Permission] | list[str]) -> frozenset[Permission]:
    """The permissions held, with implications added."""
    held = {parse(p) if isinstance(p, str) else p for p in perms}
    for p in list(held):
        held |= IMPLIES.get(p, frozenset())
    return frozenset(held)
