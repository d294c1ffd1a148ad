"""The bridge's request filter inside Orthanc (loaded by orthanc-python 4.0 as ``PythonScript``).

It runs under Debian's ``/usr/bin/python3`` inside the Orthanc process, so it may use only the
standard library and Debian packages: ``python3-jwt`` (PyJWT 2.6) and ``python3-cryptography``.
The bridge's own modules (verifier, route table, permission vocabulary, audit event model) are
imported from the bridge checkout this file lives in (``../..``), or from ``PACS_BRIDGE_ROOT``
when the plugin file was copied elsewhere; they are stdlib-only on purpose.

Fail closed: every request is denied unless :class:`bridge.pacs.gate.Gate` allows it; no
configuration, a broken configuration, or any exception is a denial.  An exception escaping the
callback would make Orthanc answer 500 and log a traceback; returning anything but a ``bool``
does the same.  Orthanc answers ``False`` with 403 and an empty body (a filter cannot send 401 or
``WWW-Authenticate``).

The ``orthanc`` module exists only inside Orthanc; the import is guarded so that unit tests can
import this module (it then denies everything).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:  # only inside Orthanc
    import orthanc  # type: ignore[import-not-found]
except ImportError:  # unit tests, tooling
    orthanc = None


def _bridge_root() -> str:
    """Where the ``bridge`` package is: ``PACS_BRIDGE_ROOT``, else this file's checkout."""
    return os.environ.get("PACS_BRIDGE_ROOT") or str(Path(__file__).resolve().parents[2])


if _bridge_root() not in sys.path:
    sys.path.insert(0, _bridge_root())

from bridge.pacs import plugin_config  # noqa: E402 - needs the sys.path entry above
from bridge.pacs.gate import Gate  # noqa: E402


def _log(message: str) -> None:
    if orthanc is not None:
        orthanc.LogWarning("pacs-bridge: " + message)


class _Holder:
    """The current :class:`Gate`, rebuilt when the config file changes (checked every few seconds)."""

    def __init__(self) -> None:
        self.gate: Gate | None = None
        self.path: str | None = None
        self.stamp: tuple[float, int] | None = None
        self.next_check = 0.0
        self.lock = threading.Lock()

    def current(self) -> Gate | None:
        if time.monotonic() >= self.next_check:
            with self.lock:
                if time.monotonic() >= self.next_check:
                    self._reload()
        return self.gate

    def _reload(self) -> None:
        period = self.gate.config.reload_check_seconds if self.gate else 2.0
        self.next_check = time.monotonic() + period
        if orthanc is None:
            return
        section = json.loads(orthanc.GetConfiguration()).get(plugin_config.ORTHANC_SECTION) or {}
        path = plugin_config.locate(section)
        try:
            stamp = None
            if path:
                st = os.stat(path)
                stamp = (st.st_mtime, st.st_size)
            if self.gate is not None and path == self.path and stamp == self.stamp:
                return
            self.path, self.stamp = path, stamp
            config = plugin_config.read_file(path) if path else plugin_config.build(
                section, f"Orthanc configuration, section {plugin_config.ORTHANC_SECTION}")
        except (OSError, ValueError) as exc:
            self._replace(None)
            _log(f"configuration unusable, denying every request: {exc}")
            return
        gate = Gate(config, orthanc.RestApiGet, orthanc.RestApiPost)
        gate.start()
        self._replace(gate)
        self.next_check = time.monotonic() + config.reload_check_seconds
        _log(f"configuration loaded from {config.source} (issuer {config.issuer}, audience {config.audience})")

    def _replace(self, gate: Gate | None) -> None:
        old, self.gate = self.gate, gate
        if old is not None:  # flush its audit queue without blocking a request
            threading.Thread(target=old.stop, name="pacs-bridge-old-gate", daemon=True).start()


HOLDER = _Holder()


def decide(uri: str, method: int, headers: dict[str, str], get: dict[str, str] | None, ip: str = "") -> bool:
    """Whether to let the request through (False whenever the plugin is not configured)."""
    gate = HOLDER.current()
    if gate is None:
        return False
    return gate.decide(uri, method, headers, get, ip)


def incoming_http_request_filter(uri: str, **kwargs: Any) -> bool:
    """Orthanc's callback: ``(uri, method=int, ip=str, headers=dict[, get=dict])``; never raises."""
    try:
        verdict = decide(uri, int(kwargs.get("method", 0)), kwargs.get("headers") or {}, kwargs.get("get"),
                         str(kwargs.get("ip") or ""))
        return verdict is True
    except Exception:  # fail closed: any error is a denial, never a 500
        return False


if orthanc is not None:
    orthanc.RegisterIncomingHttpRequestFilter(incoming_http_request_filter)
    HOLDER.current()  # load the configuration now, so a broken one shows in Orthanc's startup log
