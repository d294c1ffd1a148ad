"""The signing keys of one issuer (a JWKS fetched over HTTPS and cached) and the HTTP fetch
the verification core uses (standard library only: it also runs inside Orthanc)."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from bridge.core.errors import VerificationError

#: ``fetch(url, body, headers) -> bytes``: GET without a body, POST with one
Fetch = Callable[[str, bytes | None, Mapping[str, str]], bytes]


def default_fetch(ca_file: str | None, timeout: float) -> Fetch:
    context = ssl.create_default_context(cafile=ca_file)

    def fetch(url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST" if body else "GET")  # noqa: S310
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            return bytes(resp.read(2_000_000))

    return fetch



class JwksCache:
    """The signing keys of one issuer, fetched from its JWKS URL and cached.

    An unknown ``kid`` (a rotation) refreshes the set, but at most once per ``min_refresh_seconds``
    so that tokens with made-up ``kid`` values cannot turn the verifier into a load generator
    against the issuer.  Keys with an ``alg`` outside the pinned list, or not for signing, are
    ignored.  Also used by the token service for Keycloak's keys.
    """

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        algorithms: tuple[str, ...],
        min_refresh_seconds: float = 30.0,
        max_age_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.url = url
        self.fetch = fetch
        self.algorithms = algorithms
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str, tuple[str, Any]] = {}
        self._loaded_at = float("-inf")
        self._attempt_at = float("-inf")
        self._lock = threading.Lock()

    def _load(self) -> None:
        self._attempt_at = self.clock()
        self.fetches += 1
        try:
            data = json.loads(self.fetch(self.url, None, {"Accept": "application/json"}))
        except Exception:  # keep the old keys; an unknown kid stays unknown
            return
        keys: dict[str, tuple[str, Any]] = {}
        for entry in data.get("keys", []) if isinstance(data, dict) else []:
            kid, alg = entry.get("kid"), entry.get("alg")
            if not kid or alg not in self.algorithms or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = (alg, jwt.PyJWK(entry, alg).key)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
        self._keys = keys
        self._loaded_at = self._attempt_at

    def key(self, kid: str) -> tuple[str, Any]:
        """``(alg, key)`` for ``kid``; raises VerificationError when the issuer has no such key.

        A thread that does not know ``kid`` waits for the lock before deciding: another thread may
        be fetching the set right now (a fresh process's first requests arrive together, or a
        rotation), and the rate limit's timestamp is set when a fetch *starts*; deciding without
        the lock failed those requests with "unknown signing key" while the fetch was under way.
        Threads whose key is known never wait for a periodic refresh.
        """
        now = self.clock()
        if (
            now - self._loaded_at > self.max_age_seconds
            and now - self._attempt_at >= self.min_refresh_seconds
        ):
            with self._lock:
                now = self.clock()
                if now - self._loaded_at > self.max_age_seconds and now - self._attempt_at >= self.min_refresh_seconds:
                    self._load()
        found = self._keys.get(kid)
        if found is None:
            with self._lock:  # unknown kid: a fetch under way, or a rotation (refresh once, rate-limited)
                found = self._keys.get(kid)
                if found is None and self.clock() - self._attempt_at >= self.min_refresh_seconds:
                    self._load()
                    found = self._keys.get(kid)
        if found is None:
            raise VerificationError("unknown signing key (kid)")
        return found

