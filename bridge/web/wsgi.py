"""WSGI entry point for gunicorn: ``gunicorn 'bridge.web.wsgi:app'`` with ``PACS_BRIDGE_CONFIG`` set."""

from __future__ import annotations

import os

from bridge.config import load_config
from bridge.web.app import create_app

app = create_app(load_config(os.environ.get("PACS_BRIDGE_CONFIG")))
