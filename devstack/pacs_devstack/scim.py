"""A SCIM 2.0 service provider standing in for a PACS's provisioning endpoint: PyPI `scim2-server`.

It keeps users and groups in memory (a restart forgets them) and accepts one static bearer
token, the devstack secret ``scim-token``, on its resource endpoints (``/Users``, ``/Groups``);
the discovery endpoints (``/ServiceProviderConfig``, ``/Schemas``, ``/ResourceTypes``) answer
without a token.  Resources are served both at the root and under ``/v2``.

Transport: a real PACS SCIM endpoint is HTTPS.  `scim2-server` has no TLS options (its
``--help`` offers none), so this test double serves plain HTTP, bound to 127.0.0.1 only.  The
bridge's SCIM client accepts ``http://`` URLs for that reason; a deployment uses ``https://``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import requests

from pacs_devstack import process
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port

TOKEN_SECRET = "scim-token"


def binary() -> Path:
    """The `scim2-server` script of the running interpreter's environment (the venv)."""
    return Path(sys.executable).parent / "scim2-server"


class ScimService(Service):
    name = "scim"
    apt_packages = ()  # a PyPI dependency of the project (pyproject.toml), installed in the venv

    def prepare(self, ctx: StackContext) -> None:
        if not binary().exists():
            raise DevstackError(f"scim: {binary()} is missing; install the project: pip install -e '.[test,dev]'")
        (self.dir / "port").write_text(str(free_port()))

    def _port(self) -> int:
        try:
            return int((self.dir / "port").read_text())
        except (OSError, ValueError) as exc:
            raise DevstackError(f"scim: cannot read the port from {self.dir / 'port'}: {exc}") from None

    def start(self, ctx: StackContext) -> None:
        # scim2-server takes its token only as --bearer-token, and a command line is readable by
        # every local user (/proc/<pid>/cmdline); so the token travels in the environment (readable
        # by the same user only) and a one-line launcher appends it to argv inside the process
        launcher = (
            "import os, runpy, sys; "
            "sys.argv = [sys.argv[1], *sys.argv[2:], '--bearer-token', os.environ.pop('SCIM_BEARER_TOKEN')]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        process.start(self.name, [
            sys.executable, "-c", launcher, str(binary()),
            "--hostname", "127.0.0.1", "--port", str(self._port()),
            "--dump-resources", str(self.dir / "resources.json"),
        ], env={"SCIM_BEARER_TOKEN": ctx.secret(TOKEN_SECRET)}, cwd=self.dir)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self._port()}"
        headers = {"Authorization": f"Bearer {ctx.secret(TOKEN_SECRET)}"}

        def ready() -> bool:
            # discovery (/ServiceProviderConfig) is public in scim2-server, so also prove the
            # token is the one it accepts with an authenticated resource endpoint
            return (
                requests.get(f"{url}/ServiceProviderConfig", headers=headers, timeout=2).status_code == 200
                and requests.get(f"{url}/Users?count=1", headers=headers, timeout=2).status_code == 200
            )

        process.wait_until(ready, what="scim (scim2-server)", timeout=30, rec=process.load(self.name))
        return {"url": url, "bearer_token_secret": TOKEN_SECRET}


SERVICE = ScimService()
