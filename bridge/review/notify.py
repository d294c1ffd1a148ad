"""The escalation webhook: the batch of escalated items POSTed as JSON to ``review.webhook_url``.

TLS verified against ``review.webhook_ca_file`` (or the system store); with
``review.webhook_secret`` the body is signed, ``X-PACS-Bridge-Signature: sha256=<HMAC-SHA256
hex>``, so the receiver can tell the bridge's call from anyone else's.  The syslog alert needs
nothing here: the escalation is an audit event, and ``serve`` ships every audit event to the
collector (bridge/audit/syslog.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from collections.abc import Callable
from typing import Any

import httpx

SIGNATURE_HEADER = "X-PACS-Bridge-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(settings: Any) -> Callable[[dict[str, Any]], None] | None:
    """A sender for the configured webhook, None when none is configured."""
    r = settings.review
    if not r.webhook_url:
        return None
    verify: Any = ssl.create_default_context(cafile=str(r.webhook_ca_file)) if r.webhook_ca_file else True
    secret = r.webhook_secret.get_secret_value() if r.webhook_secret else None

    def send(payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        resp = httpx.post(r.webhook_url, content=body, headers=headers, verify=verify,
                          timeout=r.webhook_timeout_seconds)
        if resp.status_code >= 300:
            raise RuntimeError(f"webhook {r.webhook_url} answered HTTP {resp.status_code}")

    return send
