"""Fixtures of the high-availability tests: the stack's two bridge instances behind HAProxy."""

from __future__ import annotations

from typing import Any

import pytest
from ha_helpers import need


@pytest.fixture(scope="session")
def ha(stack: dict[str, Any]) -> dict[str, Any]:
    """The HAProxy entry and both instances' entries of the running stack."""
    need(stack, "haproxy", "bridge", "bridge2", "postgres")
    return {"url": stack["haproxy"]["url"], "ca": stack["ca"]["file"], "bridge": stack["bridge"],
            "bridge2": stack["bridge2"], "haproxy": stack["haproxy"]}
