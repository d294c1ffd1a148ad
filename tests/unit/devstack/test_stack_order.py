"""`stack.up` starts a service only after the services it `needs` are ready, and seeds it after them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacs_devstack import stack
from pacs_devstack.service import Service, StackContext


class Fake(Service):
    def __init__(self, name: str, events: list[str], needs: tuple[str, ...] = ()) -> None:
        self.name = name
        self.needs = needs
        self.events = events

    def running(self) -> bool:
        return False

    def prepare(self, ctx: StackContext) -> None:
        self.events.append(f"prepare {self.name}")

    def start(self, ctx: StackContext) -> None:
        self.events.append(f"start {self.name}")

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        self.events.append(f"ready {self.name}")
        return {"port": 1}

    def seed(self, ctx: StackContext) -> None:
        self.events.append(f"seed {self.name}")

    def stop(self) -> bool:
        return False


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    monkeypatch.setenv("PACS_BRIDGE_DEVSTACK_DIR", str(tmp_path))
    events: list[str] = []
    services = {
        "keycloak": Fake("keycloak", events, needs=("slapd",)),
        "samba": Fake("samba", events),
        "slapd": Fake("slapd", events),
    }
    monkeypatch.setattr(stack, "service", lambda name: services[name])
    return events


def test_needed_service_is_ready_before_the_dependent_starts(fakes: list[str]) -> None:
    stack.up(["keycloak", "samba", "slapd"], log=lambda _: None)
    assert fakes.index("ready slapd") < fakes.index("prepare keycloak")
    # the slow one is waited for only after the dependent was started
    assert fakes.index("start keycloak") < fakes.index("ready samba")
    assert fakes.index("seed keycloak") > max(fakes.index("seed samba"), fakes.index("seed slapd"))


def test_need_outside_the_selection_does_not_block(fakes: list[str]) -> None:
    stack.up(["keycloak", "samba"], log=lambda _: None)
    assert fakes[:4] == ["prepare keycloak", "start keycloak", "prepare samba", "start samba"]
