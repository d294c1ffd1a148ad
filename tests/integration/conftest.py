"""Narrow session fixtures shared by several integration areas (add, don't rewrite)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import DirectorySection, Settings
from bridge.directory.reader import reader_for
from pacs_devstack import keycloak as kc
from pacs_devstack.service import StackContext


@pytest.fixture(scope="session")
def directory_sections(stack: dict[str, Any]) -> dict[str, DirectorySection]:
    """``{realm: the bridge's directory section}`` for each directory of this stack run."""
    ctx = StackContext(ca_file=Path(stack["ca"]["file"]))
    out: dict[str, DirectorySection] = {}
    for realm, name in kc.REALM_DIRECTORY.items():
        if name not in stack:
            continue
        info = stack[name]
        out[realm] = DirectorySection(
            kind="ad" if name == "samba" else "openldap", url=info["ldaps_url"], bind_dn=info["bind_dn"],
            bind_password=ctx.secret(info["bind_password_secret"]), base_dn=info["base_dn"],
            users_dn=info["users_dn"], groups_dn=info["groups_dn"], ca_file=ctx.ca_file,
        )
    return out


@pytest.fixture(scope="session")
def directory_ids(directory_sections: dict[str, DirectorySection]) -> dict[str, dict[str, str]]:
    """``{realm: {username: stable directory id}}`` read from the directory itself, the way the
    sync keys its assignments (objectGUID on Samba AD, entryUUID on OpenLDAP)."""
    out: dict[str, dict[str, str]] = {}
    for realm, section in directory_sections.items():
        snap = reader_for(section).read()
        out[realm] = {u.username: uid for uid, u in snap.users.items()}
    return out


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The PACS tests point Orthanc's plugin at a bridge double; the others need the real bridge
    (tests/integration/pacs/conftest.py, ``PluginSwap``).  Switched before any fixture of the test
    is set up (a module fixture may already upload through the plugin), only when the need changes."""
    swap = getattr(item.config, "pacs_bridge_plugin_swap", None)
    if swap is not None:
        swap.ensure(double="pacs" in getattr(item, "fixturenames", ()))


def _unsecret(node: Any) -> Any:
    """model_dump keeps SecretStr objects; the settings model wants their values back."""
    from pydantic import SecretStr

    if isinstance(node, dict):
        return {k: _unsecret(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unsecret(v) for v in node]
    if isinstance(node, SecretStr):
        return node.get_secret_value()
    return node


@pytest.fixture(scope="session")
def settings_at() -> Callable[..., Settings]:
    """``settings_at(base, origin, edit=None)``: the stack bridge's settings for a second bridge at
    ``origin`` over the same database and keys (its PACS tokens keep the stack's issuer, so the stack's
    Orthanc accepts them; no trusted proxy), ``edit(data)`` changing the settings' dict first."""

    def make(base: Settings, origin: str, edit: Callable[[dict[str, Any]], None] | None = None) -> Settings:
        data = base.model_dump(mode="python")
        data["bridge"]["public_url"] = origin
        data["tokens"]["issuer"] = base.tokens.issuer or base.bridge.public_url
        data["web"]["trusted_proxy_hops"] = 0
        if edit is not None:
            edit(data)
        return Settings(**_unsecret(data))

    return make
