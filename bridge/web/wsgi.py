"""WSGI entry point, loaded by each worker of the web server (bridge/deploy/web_server.py) with
``PACS_BRIDGE_CONFIG`` set."""

from __future__ import annotations

import gc
import os

from bridge.config import load_config
from bridge.web.app import create_app

app = create_app(load_config(os.environ.get("PACS_BRIDGE_CONFIG")))

# Everything loaded so far (modules, the app, its settings and services) lives as long as the worker:
# moved out of the cyclic collector's sight, so its collections only walk what requests create
# (shorter pauses on the request path; the server loads this module in each worker after the fork).
gc.collect()
gc.freeze()
