"""Why a token was refused: one exception for the whole verification core.

``error`` is the RFC 6750 / RFC 9470 error code the caller puts in ``WWW-Authenticate`` (or, in
the Orthanc plugin, in the audit record); ``reason`` is the human text, never the token.
"""

from __future__ import annotations


class VerificationError(Exception):
    """The token is not acceptable; ``error`` is the RFC 6750 / RFC 9470 error code."""

    def __init__(self, reason: str, error: str = "invalid_token"):
        super().__init__(reason)
        self.reason = reason
        self.error = error

