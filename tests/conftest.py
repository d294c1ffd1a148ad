"""Session fixtures: the real dev stack, started by the same code as `make demo`.

Integration tests ask for `stack` (or a narrower fixture built on it).  If a stack is already
running (a `make demo` in another terminal) it is reused and left running; otherwise this
session starts it and stops it at the end, whatever happens.  In CI (`CI=true`) a server that
cannot start fails the run; it is never a silent skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, Any]]:
    from pacs_devstack import stack as devstack
    from pacs_devstack.process import DevstackError

    # PACS_BRIDGE_DEVSTACK_ONLY=samba,slapd narrows the stack while working on one part
    only = [n for n in os.environ.get("PACS_BRIDGE_DEVSTACK_ONLY", "").split(",") if n] or None
    if IN_CI and only:
        # tests skip parts that a narrowed stack lacks; CI runs everything, so it may not narrow
        pytest.fail("PACS_BRIDGE_DEVSTACK_ONLY is set in CI: the whole stack must run", pytrace=False)
    before = devstack.status()
    try:
        info = devstack.up(only, owner="test" if not any(before.values()) else "cli")
    except DevstackError as exc:
        if IN_CI:
            pytest.fail(f"dev stack could not start: {exc}", pytrace=False)
        pytest.skip(f"dev stack could not start (outside CI): {exc}")
    absent = [n for n in devstack.ALL if n not in info]
    if IN_CI and absent:
        pytest.fail(f"dev stack came up without {', '.join(absent)}", pytrace=False)
    yield info
    if not any(before.values()):
        devstack.down(owner="test")


@pytest.fixture(scope="session", autouse=True)
def _release_in_the_test_report(record_testsuite_property: Any) -> None:
    """The JUnit report (`make test` writes one per release) names the release it tested: the
    compliance report reads the one for its own version (bridge/compliance/checks.py)."""
    from importlib.metadata import version

    record_testsuite_property("version", version("pacs-sso-bridge"))
