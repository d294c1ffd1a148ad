"""PACS tokens: signing keys, the claims of a PACS token, issue/exchange/introspect/revoke.

The MFA rule these tokens must satisfy lives in :mod:`bridge.core.mfa` (shared with the PACS plugin).
"""
