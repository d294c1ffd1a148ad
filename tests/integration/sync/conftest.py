"""Fixtures for the sync against the real dev stack directories, SCIM server and Keycloak.

Tests that change the directory create their own users (``zz.sync.*``) and delete them at the end,
because the session stack is shared with other test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from sync_helpers import AdUsers, directory_section, need

from bridge.config import DirectorySection
from bridge.store.db import migrate
from pacs_devstack import ldapseed
from pacs_devstack.service import StackContext
from pacs_devstack.state import state_dir


@pytest.fixture(scope="session")
def ctx(stack: dict[str, Any]) -> StackContext:
    return StackContext(ca_file=state_dir() / "ca" / "ca.pem")


@pytest.fixture
def ad(stack: dict[str, Any], ctx: StackContext) -> DirectorySection:
    need(stack, "samba")
    return directory_section(stack, ctx, "samba")


@pytest.fixture
def ad_admin(stack: dict[str, Any], ctx: StackContext) -> Iterator[ldap3.Connection]:
    need(stack, "samba")
    info = stack["samba"]
    conn = ldapseed.connect(info["ldaps_url"], ctx.ca_file, info["admin_dn"], ctx.secret(info["admin_password_secret"]))
    yield conn
    conn.unbind()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'bridge.db'}"
    migrate(url)
    return url


@pytest.fixture
def ad_users(ad_admin: ldap3.Connection) -> Iterator[AdUsers]:
    users = AdUsers(ad_admin)
    yield users
    users.cleanup()
