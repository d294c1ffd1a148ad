"""The one OAuth error response of the web app (RFC 6749 section 5.2 / RFC 6750 section 3 shape).

Why Authlib's base error class: the token endpoint's errors already come from Authlib
(bridge/tokens/oauth.py), so every other endpoint answering in the OAuth error shape takes its body
and headers (``Content-Type: application/json``, ``Cache-Control: no-store``, ``Pragma:
no-cache``) from the same class.  :class:`authlib.common.errors.AuthlibHTTPError` rather than
``OAuth2Error``: the latter refuses descriptions with ``"`` or ``\\``, and ours quote what a
verifier said about a token.  The challenge header comes from :func:`bridge.errors.www_authenticate`.
"""

from __future__ import annotations

import json

from authlib.common.errors import AuthlibHTTPError
from flask import Response


def oauth_error_response(
    status: int,
    error: str,
    description: str | None = None,
    *,
    www_authenticate: str | None = None,
    retry_after: int | None = None,
) -> Response:
    """``{"error": ..., "error_description": ...}`` with ``status``, no-store, and the optional
    ``WWW-Authenticate`` / ``Retry-After`` headers."""
    code, body, headers = AuthlibHTTPError(error, description, status_code=status)()
    resp = Response(json.dumps(body), status=code, headers=headers)
    if www_authenticate:
        resp.headers["WWW-Authenticate"] = www_authenticate
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp
