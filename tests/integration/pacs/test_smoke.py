"""First contact: the plugin accepts a bridge token and uploads work."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core.permissions import Permission as P

pytestmark = pytest.mark.integration


def test_view_study(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    token = pacs.bridge.token([P.VIEW])
    sid = studies["P-001"]["study"]
    assert pacs.get(f"/studies/{sid}", token).status_code == 200
