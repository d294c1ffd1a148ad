"""A bridge in miniature for verifier tests: a key ring, a JWKS 'URL' and a revocation list
(imported by name: pytest puts this test directory on sys.path)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.core import token_format
from bridge.tokens.keys import KeyRing

ISSUER = "https://bridge.test"
JWKS_URL = ISSUER + "/jwks.json"
REVOKED_URL = ISSUER + "/revocations"


@dataclass
class FakeBridge:
    ring: KeyRing
    revoked: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    down: bool = False

    def fetch(self, url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        self.calls.append(url)
        if self.down:
            raise OSError("bridge down")
        if url == JWKS_URL:
            return json.dumps(self.ring.jwks()).encode()
        if url == REVOKED_URL:
            return json.dumps({"revoked": self.revoked}).encode()
        raise OSError(url)

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": ISSUER,
            "aud": "pacs",
            "sub": "guid-1",
            "client_id": "viewer",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": f"j-{time.monotonic_ns()}",
            "auth_time": now - 5,
            "acr": "mfa",
            "amr": ["pwd", "otp"],
            "permissions": ["view"],
            "roles": ["radiologist"],
            token_format.CLAIM: token_format.CURRENT,
        }
        if "grants" not in over:  # one grant of ``permissions`` in ``scopes`` (the old flat shape)
            perms = over.get("permissions", base["permissions"])
            scope = over.pop("scopes", None)
            base["grants"] = [{"kind": "role", "role": "radiologist", "permissions": perms,
                               "scope": {} if scope is None else scope}]
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, **over: Any) -> str:
        """A signed token; ``scopes=`` is the scope of its one grant (``grants=`` gives several)."""
        return self.ring.sign(self.claims(**over))
