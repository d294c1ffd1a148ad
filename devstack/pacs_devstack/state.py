"""Where the dev stack keeps its state: one directory (default `.devstack/`, git-ignored).

Layout::

    .devstack/
      ca/                 local certificate authority (ca.pem, ca-key.pem) and issued certs
      <service>/          each service's config, data, log and `process.json`
      stack.json          endpoints of the running stack (read by tests, demo and CLI)
      cache/              downloads kept between runs (Keycloak zip, unpacked dist)
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

DEFAULT_DIRNAME = ".devstack"
#: the stack.json entry recording which services this stack was brought up with (`stack.up`)
SELECTION = "selection"


def state_dir() -> Path:
    """The state directory: `$PACS_BRIDGE_DEVSTACK_DIR`, else `.devstack/` in the project root."""
    env = os.environ.get("PACS_BRIDGE_DEVSTACK_DIR")
    path = Path(env) if env else project_root() / DEFAULT_DIRNAME
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def project_root() -> Path:
    """The repository root (where pyproject.toml is); the working directory when installed elsewhere."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "bridge").is_dir():
            return parent
    return Path.cwd()


def cache_dir() -> Path:
    """Downloads kept across runs: `$PACS_BRIDGE_CACHE_DIR`, else `~/.cache/pacs-bridge`."""
    env = os.environ.get("PACS_BRIDGE_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "pacs-bridge"
    path.mkdir(parents=True, exist_ok=True)
    return path


def service_dir(name: str) -> Path:
    path = state_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stack_file() -> Path:
    return state_dir() / "stack.json"


def read_stack() -> dict[str, Any]:
    path = stack_file()
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def write_stack(info: dict[str, Any]) -> None:
    path = stack_file()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)


def update_stack(name: str, info: dict[str, Any]) -> None:
    data = read_stack()
    data[name] = info
    write_stack(data)
