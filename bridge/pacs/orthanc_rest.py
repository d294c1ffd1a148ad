"""Orthanc's built-in REST API for the plugin, called without holding Python's global lock (GIL).

Why: orthanc-python 4.0 keeps the GIL during ``orthanc.RestApiGet``/``Post``.  Orthanc 1.10.1 calls
the storage area's ``remove`` (a Python callback with the encrypted storage area) inside the
database transaction of a delete, so a Python thread in a REST call (GIL held, waiting for the
database) and an HTTP thread deleting (database held, waiting for the GIL) deadlock Orthanc.
:mod:`bridge.deploy.orthanc_rest_plugin` is a tiny C plugin Orthanc loads first; this module calls
its functions through :mod:`ctypes`, which releases the GIL for the duration of each call, so no
thread ever waits for Orthanc while holding the GIL.

Same contract as ``orthanc.RestApiGet``/``RestApiPost`` (built-in API only, never a plugin's route;
bytes back; an error raises ``error(code, description)``, ``orthanc.OrthancException`` in the
plugin), with one difference made on purpose: a URI holding a NUL character is refused (a C string
would end there and name another resource).

:func:`load` finds the library among those Orthanc has loaded (``/proc/self/maps``), never by a path
from configuration: only the very copy Orthanc initialised holds the plugin context.  Stdlib only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

#: the library's file name (bridge.deploy.orthanc_rest_plugin builds it under this name)
LIBRARY = "libPacsBridgeRest.so"


class _Buffer(ctypes.Structure):
    """``OrthancPluginMemoryBuffer``: what the SDK allocates, freed by the library."""

    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_uint32)]


class RestWithoutGil:
    """``get(uri)`` / ``post(uri, body)`` through the C plugin; the GIL is released during each call."""

    def __init__(self, library: ctypes.CDLL, error: Callable[[int, str], BaseException]) -> None:
        self._call = library.pacs_bridge_rest_call
        self._call.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint32,
                               ctypes.POINTER(_Buffer)]
        self._call.restype = ctypes.c_int32
        self._free = library.pacs_bridge_rest_free
        self._free.argtypes = [ctypes.POINTER(_Buffer)]
        self._free.restype = None
        self._describe = library.pacs_bridge_rest_error
        self._describe.argtypes = [ctypes.c_int32]
        self._describe.restype = ctypes.c_char_p
        self._error = error

    def get(self, uri: str) -> bytes:
        return self._request(0, uri, b"")

    def post(self, uri: str, body: bytes | str) -> bytes:
        if isinstance(body, str):
            return self._request(1, uri, body.encode("utf-8"))
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"a REST body must be bytes or str, not {type(body).__name__}")
        return self._request(1, uri, bytes(body))

    def _request(self, post: int, uri: str, body: bytes) -> bytes:
        raw = uri.encode("utf-8")
        if b"\0" in raw:
            raise ValueError(f"a REST URI with a NUL character: {uri!r}")
        if len(body) > 0xFFFFFFFF:
            raise ValueError("a REST body over 4 GiB")
        answer = _Buffer()
        code = self._call(post, raw, body, len(body), ctypes.byref(answer))  # GIL released here
        try:
            if code != 0:
                text = self._describe(code)
                raise self._error(code, text.decode("utf-8", "replace") if text else f"Orthanc error {code}")
            return ctypes.string_at(answer.data, answer.size) if answer.data and answer.size else b""
        finally:
            self._free(ctypes.byref(answer))


def loaded_library(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The path of :data:`LIBRARY` as this process has it mapped, or None."""
    try:
        text = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(None, 5)  # address perms offset dev inode path
        if len(fields) == 6 and fields[5].startswith("/") and fields[5].rstrip().endswith("/" + LIBRARY):
            return fields[5].rstrip()
    return None


def load(error: Callable[[int, str], BaseException], maps: Path = Path("/proc/self/maps")) -> RestWithoutGil | None:
    """The GIL-free REST API if Orthanc loaded and initialised the library, else None (the caller
    then falls back to ``orthanc.RestApiGet``/``Post`` and says so in Orthanc's log)."""
    path = loaded_library(maps)
    if path is None:
        return None
    library = ctypes.CDLL(path)  # already loaded by Orthanc: the same copy, holding its context
    ready = library.pacs_bridge_rest_ready
    ready.argtypes, ready.restype = [], ctypes.c_int32
    if not ready():
        return None
    return RestWithoutGil(library, error)
