"""PACS tokens: signing keys, the claims of a PACS token, the MFA rule, issue/exchange/introspect/revoke.

Kept import-free on purpose: :mod:`bridge.tokens.mfa` is imported by the PACS verifier under
Debian's ``/usr/bin/python3``, which must not pull Flask, Authlib or SQLAlchemy in.
"""
