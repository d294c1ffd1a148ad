"""The verification core both sides share: the bridge (``tokens``, ``oidc``, ``web``) and the
Orthanc plugin (``pacs``).

JWS parse and signature check (``jws``), the JWKS and verified-token caches (``jwks``,
``verified_cache``), verification errors (``errors``), the PACS verifier (``verifier``), the MFA
rule (``mfa``), the permission vocabulary (``permissions``), the route -> permission table
(``routes``), the audit codes and event model (``audit_codes``, ``audit_events``) and the token
format version (``token_format``).

Standard library plus PyJWT and cryptography only, because it runs inside Orthanc under Debian's
``/usr/bin/python3`` (python3-jwt 2.6, python3-cryptography 38).  It imports nothing else from the
project; an import-linter contract (``pyproject.toml``) holds that, run by ``make test`` and by
``tests/unit/test_layers.py``.
"""
