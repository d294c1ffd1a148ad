"""What every part of the dev stack implements, and the context they share."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_devstack import process
from pacs_devstack.state import free_port, port_open, service_dir, state_dir


@dataclass
class StackContext:
    """Shared by the services during `up`: the CA, generated secrets, and each service's endpoints.

    `info[name]` is what a service's `wait_ready` returned; it ends up in `.devstack/stack.json`
    and is what tests, the demo and the CLI read to find the servers.
    """

    ca_file: Path
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    _secrets: dict[str, str] = field(default_factory=dict)

    def secret(self, name: str, make: Callable[[], str] | None = None) -> str:
        """A generated secret, stable for the life of the state directory (file 0600).

        `make` generates it when a format is imposed (a base64 key); by default a password that
        meets AD's complexity rules."""
        if not self._secrets:
            path = state_dir() / "secrets.json"
            if path.exists():
                self._secrets.update(json.loads(path.read_text()))
        if name not in self._secrets:
            # letters, digits and punctuation AD accepts in a password (complexity rules)
            self._secrets[name] = make() if make else "Dv1!" + secrets.token_urlsafe(18)
            path = state_dir() / "secrets.json"
            path.write_text(json.dumps(self._secrets, indent=2))
            path.chmod(0o600)
        return self._secrets[name]


def sticky_port(name: str) -> int:
    """Service ``name``'s port, chosen once per `up` and kept in ``<its dir>/port``: for services
    whose URL others need before they start (Keycloak's realm import names the bridge's and
    HAProxy's URLs).  Kept while the service runs or while nothing else took the port; else a
    fresh one.  A function of the name, so a module can know a service's port without importing
    the service's module (devstack/pacs_devstack/front.py)."""
    path = service_dir(name) / "port"
    try:
        port = int(path.read_text())
        rec = process.load(name)
        if (rec is not None and rec.running()) or not port_open(port):
            return port
    except (OSError, ValueError):
        pass
    port = free_port()
    path.write_text(str(port))
    return port


class Service:
    """One server of the stack.  Subclasses set `name` and `apt_packages` and fill in the hooks.

    Life cycle during `up`: ``prepare`` (write config, provision; idempotent) -> ``start``
    (launch, do not wait) -> ``wait_ready`` (block until healthy; return endpoints) -> ``seed``.
    """

    name: str = "service"
    apt_packages: tuple[str, ...] = ()
    #: services whose `wait_ready` info this one needs before `prepare` (e.g. Keycloak -> samba)
    needs: tuple[str, ...] = ()

    @property
    def dir(self) -> Path:
        return service_dir(self.name)

    def sticky_port(self) -> int:
        """See :func:`sticky_port`."""
        return sticky_port(self.name)

    def install(self) -> None:
        """Anything beyond apt packages (Maven download, pip); idempotent."""

    def prepare(self, ctx: StackContext) -> None:
        """Write configuration, certificates, provision data directories; idempotent."""

    def start(self, ctx: StackContext) -> None:
        raise NotImplementedError

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        raise NotImplementedError

    def seed(self, ctx: StackContext) -> None:
        """Load demo data (directory users, studies)."""

    def running(self) -> bool:
        rec = process.load(self.name)
        return bool(rec and rec.running())

    def stop(self) -> bool:
        return process.stop(self.name)
