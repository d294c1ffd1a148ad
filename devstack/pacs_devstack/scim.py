"""A SCIM 2.0 service provider standing in for a PACS's provisioning endpoint: PyPI `scim2-server`.

It keeps users and groups in memory (a restart forgets them) and accepts one static bearer
token, the devstack secret ``scim-token``, on its resource endpoints (``/Users``, ``/Groups``);
the discovery endpoints (``/ServiceProviderConfig``, ``/Schemas``, ``/ResourceTypes``) answer
without a token.  Resources are served both at the root and under ``/v2``.

Transport: HTTPS with a certificate from the dev CA, like a real PACS SCIM endpoint, so the
bridge's ``scim.url`` needs no ``allow_plaintext``.  `scim2-server` has no TLS options (its
``--help`` offers none) but serves with the standard library's ``wsgiref`` server, so the
launcher below wraps that server's listening socket in TLS (the handshake runs in each request's
thread, on its first read) and sets ``HTTPS=on`` so the WSGI URL scheme, and the resource
locations scim2-server writes, say ``https``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import requests

from pacs_devstack import process, tls
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port

TOKEN_SECRET = "scim-token"

#: run scim2-server's script with its wsgiref server behind TLS.  argv: script, cert, key, args...
#: The bearer token travels in the environment (see ``start``) and is appended to argv here.
_LAUNCHER = """\
import os, runpy, ssl, sys
os.environ["HTTPS"] = "on"  # before wsgiref.handlers reads the environment: wsgi.url_scheme https
import scim2_server.testserver.cli as cli
script, cert, key = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(cert, key)
plain_make_server = cli.make_server
def tls_make_server(*args, **kwargs):
    server = plain_make_server(*args, **kwargs)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server
cli.make_server = tls_make_server
sys.argv = [script, *sys.argv[4:], "--bearer-token", os.environ.pop("SCIM_BEARER_TOKEN")]
runpy.run_path(script, run_name="__main__")
"""


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
        # by the same user only) and the launcher appends it to argv inside the process
        pair = tls.issue("scim")
        process.start(self.name, [
            sys.executable, "-c", _LAUNCHER, str(binary()), str(pair.cert), str(pair.key),
            "--hostname", "127.0.0.1", "--port", str(self._port()),
            "--dump-resources", str(self.dir / "resources.json"),
        ], env={"SCIM_BEARER_TOKEN": ctx.secret(TOKEN_SECRET)}, cwd=self.dir)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        url = f"https://127.0.0.1:{self._port()}"
        headers = {"Authorization": f"Bearer {ctx.secret(TOKEN_SECRET)}"}
        ca = str(ctx.ca_file)

        def ready() -> bool:
            # discovery (/ServiceProviderConfig) is public in scim2-server, so also prove the
            # token is the one it accepts with an authenticated resource endpoint
            return (
                requests.get(f"{url}/ServiceProviderConfig", headers=headers, timeout=2, verify=ca).status_code == 200
                and requests.get(f"{url}/Users?count=1", headers=headers, timeout=2, verify=ca).status_code == 200
            )

        process.wait_until(ready, what="scim (scim2-server)", timeout=30, rec=process.load(self.name))
        return {"url": url, "bearer_token_secret": TOKEN_SECRET, "ca_file": ca}


SERVICE = ScimService()
