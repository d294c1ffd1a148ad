"""The bridge's request filter inside Orthanc (loaded by orthanc-python 4.0).

It runs under Debian's ``/usr/bin/python3`` inside the Orthanc process, so it may use only the
standard library and Debian packages (python3-jwt, python3-cryptography), never the venv.

Fail closed: every request is denied unless the decision function says otherwise, and any
exception is a denial.  An exception escaping the callback would make Orthanc answer 500 and
log a traceback; returning anything but a ``bool`` does the same.  Orthanc answers ``False``
with 403 and an empty body (a filter cannot send 401 or ``WWW-Authenticate``).

The ``orthanc`` module exists only inside Orthanc; the import is guarded so that unit tests can
import and test the pure decision functions.
"""

from __future__ import annotations

from typing import Any

try:  # only inside Orthanc
    import orthanc  # type: ignore[import-not-found]
except ImportError:  # unit tests, tooling
    orthanc = None


def decide(uri: str, method: int, headers: dict[str, str], get: dict[str, str] | None) -> bool:
    """Whether to let the request through.  For now: nothing is allowed (the PACS part replaces this)."""
    return False


def incoming_http_request_filter(uri: str, **kwargs: Any) -> bool:
    """Orthanc's callback: ``(uri, method=int, ip=str, headers=dict[, get=dict])``; never raises."""
    try:
        headers = dict(kwargs.get("headers") or {})
        verdict = decide(uri, int(kwargs.get("method", 0)), headers, kwargs.get("get"))
        return verdict is True
    except Exception:  # fail closed: any error is a denial, never a 500
        return False


if orthanc is not None:
    orthanc.RegisterIncomingHttpRequestFilter(incoming_http_request_filter)
