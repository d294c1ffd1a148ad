"""Helpers for the sync integration tests (fixtures are in conftest.py).

Tests that change the directory create their own users (``zz.sync.*``) and delete them at the end,
because the session stack is shared with other test modules."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

import ldap3
import pytest

from bridge.config import DirectorySection, Settings, load_config
from bridge.directory.reader import reader_for
from bridge.policy.loader import load_policy
from bridge.store.db import engine as make_engine
from bridge.sync.runner import SyncRunner
from bridge.sync.safety import Thresholds
from pacs_devstack.service import StackContext

POLICY = Path(__file__).parents[3] / "examples" / "policy.yaml"
RADIOLOGY = "CN=Radiology,OU=Radiology,OU=Groups,DC=hospital,DC=test"
TECHNOLOGISTS = "CN=Technologists,OU=Technologists,OU=Groups,DC=hospital,DC=test"
PACS_USERS_RADIOLOGY = "CN=PACS-Users,OU=Radiology,OU=Groups,DC=hospital,DC=test"
_counter = itertools.count(1)




def need(stack: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in stack]
    if missing:
        pytest.skip(f"dev stack runs without {', '.join(missing)}")


def directory_section(stack: dict[str, Any], ctx: StackContext, name: str, **over: Any) -> DirectorySection:
    info = stack[name]
    kw: dict[str, Any] = {
        "kind": "ad" if name == "samba" else "openldap", "url": info["ldaps_url"], "bind_dn": info["bind_dn"],
        "bind_password": ctx.secret(info["bind_password_secret"]), "base_dn": info["base_dn"],
        "users_dn": info["users_dn"], "groups_dn": info["groups_dn"], "ca_file": ctx.ca_file,
    }
    if name == "slapd":
        kw["disabled_attribute"] = info.get("disabled_attribute", "pwdAccountLockedTime")
    kw.update(over)
    return DirectorySection(**kw)








def make_runner(section: DirectorySection, db_url: str, targets: list[Any] | None = None, *,
                thresholds: Thresholds | None = None, policy: Path = POLICY) -> SyncRunner:
    from bridge.audit.store import AuditStore
    from bridge.sync.targets.store import StoreTarget

    eng = make_engine(db_url)
    return SyncRunner(reader_for(section), load_policy(policy), targets if targets is not None else [StoreTarget(eng)],
                      eng, thresholds=thresholds or Thresholds(500, 10), audit=AuditStore(eng))


class AdUsers:
    """Creates throw-away AD users and removes them (and only them) afterwards."""

    def __init__(self, conn: ldap3.Connection):
        self.conn = conn
        self.created: list[str] = []

    def create(self, groups: tuple[str, ...] = (), *, department: str = "Radiology") -> tuple[str, str]:
        name = f"zz.sync.{os.getpid() % 1000}.{next(_counter)}"
        dn = f"CN={name},OU=Radiology,OU=Staff,DC=hospital,DC=test"
        ok = self.conn.add(dn, ["top", "person", "organizationalPerson", "user"], {
            "sAMAccountName": name, "displayName": f"Test {name}", "department": department,
            "userAccountControl": 544})
        assert ok, self.conn.result
        self.created.append(dn)
        for g in groups:
            self.add_to(dn, g)
        return name, dn

    def add_to(self, dn: str, group: str) -> None:
        assert self.conn.modify(group, {"member": [(ldap3.MODIFY_ADD, [dn])]}), self.conn.result

    def remove_from(self, dn: str, group: str) -> None:
        assert self.conn.modify(group, {"member": [(ldap3.MODIFY_DELETE, [dn])]}), self.conn.result

    def disable(self, dn: str) -> None:
        assert self.conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [546])]}), self.conn.result

    def rename(self, dn: str, new_name: str) -> str:
        assert self.conn.modify(dn, {"sAMAccountName": [(ldap3.MODIFY_REPLACE, [new_name])]}), self.conn.result
        assert self.conn.modify_dn(dn, f"CN={new_name}"), self.conn.result
        new_dn = f"CN={new_name}," + dn.split(",", 1)[1]
        self.created[self.created.index(dn)] = new_dn
        return new_dn

    def delete(self, dn: str) -> None:
        assert self.conn.delete(dn), self.conn.result
        self.created.remove(dn)

    def cleanup(self) -> None:
        for dn in self.created:
            with contextlib.suppress(Exception):
                self.conn.delete(dn)




def settings_for(stack: dict[str, Any], ctx: StackContext, db_url: str, tmp_path: Path, **sync: Any) -> Settings:
    """A full configuration for CLI tests (AD, store target)."""
    d = directory_section(stack, ctx, "samba")
    return load_config(None, audit={"checkpoint_key_file": tempfile.mkdtemp(prefix="cp-") + "/cp.key"}, directory={
        "kind": "ad", "url": d.url, "bind_dn": d.bind_dn, "bind_password": d.bind_password.get_secret_value(),
        "base_dn": d.base_dn, "users_dn": d.users_dn, "groups_dn": d.groups_dn, "ca_file": str(d.ca_file)},
        store={"url": db_url}, sync={"policy_file": str(POLICY), "targets": ["store"], **sync})
