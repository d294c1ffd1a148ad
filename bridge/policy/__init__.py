"""Directory groups -> roles -> PACS permissions.  The permission vocabulary lives in
:mod:`bridge.core.permissions` and is imported by the token service and the PACS verifier."""
