"""The bridge's SCIM 2.0 client (RFC 7644): one place for the HTTP part -- bearer token, TLS
verification, errors that name the request, paging through a list.

Why a module of its own: the sync's SCIM target writes through it (bridge/sync/targets/scim.py)
and the access review reads the same PACS's accounts through it to find orphans
(bridge/review/run.py); the review may not import the sync (the sync imports the review's
exceptions), so neither owns it.
"""

from __future__ import annotations

from typing import Any

import httpx

PAGE = 200


class ScimError(RuntimeError):
    """A SCIM request failed: the message names the method, path and HTTP status (never the token)."""


class ScimUnreachable(ScimError):
    """The SCIM server could not be reached at all (connection, TLS, timeout)."""


class ScimClient:
    def __init__(self, url: str, token: str, *, verify: str | bool = True, timeout: float = 30):
        self.http = httpx.Client(base_url=url.rstrip("/"), verify=verify, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/scim+json",
                                          "Accept": "application/scim+json"})

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ScimUnreachable(f"scim {self.http.base_url}{path}: {exc}") from exc
        if r.status_code >= 400:
            raise ScimError(f"scim {method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def all(self, path: str) -> list[dict[str, Any]]:
        """Every resource of a list endpoint (``/Users``, ``/Groups``), page by page."""
        out: list[dict[str, Any]] = []
        start = 1
        while True:
            page = self.request("GET", path, params={"startIndex": start, "count": PAGE}) or {}
            res = page.get("Resources") or []
            out.extend(res)
            total = int(page.get("totalResults", len(out)))
            if not res or len(out) >= total:
                return out
            start += len(res)

    def accounts(self) -> dict[str, str]:
        """``{externalId (lower case): userName}`` of every User that carries an ``externalId``
        (the directory's stable id, as the sync writes it)."""
        return {str(u["externalId"]).lower(): str(u.get("userName") or u["externalId"])
                for u in self.all("/Users") if u.get("externalId")}


def from_settings(settings: Any) -> ScimClient | None:
    """The configured SCIM PACS (``scim.url`` and ``scim.bearer_token``), or None."""
    sc = settings.scim
    if not sc.url or sc.bearer_token is None:
        return None
    return ScimClient(sc.url, sc.bearer_token.get_secret_value(), verify=str(sc.ca_file) if sc.ca_file else True)
