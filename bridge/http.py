"""HTTP sessions that trust exactly the CA they are given.

Why: with `trust_env` on (requests' default), `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` in the
environment silently replaces `session.verify`, so a client configured for the hospital CA could
end up trusting another bundle (or fail against the right server).  Every client of the bridge
that talks to Keycloak, the bridge or a dev-stack server builds its session here.
"""

from __future__ import annotations

from pathlib import Path

import requests


def pinned_session(ca_file: str | Path | None = None) -> requests.Session:
    """A `requests.Session` verifying against `ca_file` (the system store when None), ignoring
    proxy and CA-bundle environment variables."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(ca_file) if ca_file else True
    return s
