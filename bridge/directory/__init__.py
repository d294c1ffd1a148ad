"""Read AD / OpenLDAP into an immutable :class:`DirectorySnapshot` (see :mod:`.reader`)."""

from bridge.directory.model import (
    DirectoryGroup,
    DirectorySnapshot,
    DirectoryUnavailable,
    DirectoryUser,
    normalize_dn,
)

__all__ = ["DirectoryGroup", "DirectorySnapshot", "DirectoryUnavailable", "DirectoryUser", "normalize_dn"]
