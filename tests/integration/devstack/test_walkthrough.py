"""The chain `make demo` shows works on the session stack: MFA login -> PACS token -> Orthanc."""

from __future__ import annotations

import io
from typing import Any

import pytest

from pacs_devstack import walkthrough

pytestmark = pytest.mark.integration


def test_demo_walkthrough(stack: dict[str, Any]) -> None:
    out = io.StringIO()
    ok = walkthrough.run(out)
    text = out.getvalue()
    assert ok, text
    assert "FAILED" not in text
    # a token is summarised by its claims, never printed
    assert "eyJ" not in text
    # it ends with where staff open the PACS in a browser, and as whom (issue 11)
    if "orthanc" in stack:
        assert f"{stack['bridge']['url']}/pacs/" in text and "log in as rad.alice" in text, text[-400:]
