"""The bridge's request filter inside Orthanc (loaded by orthanc-python 4.0 as ``PythonScript``).

It runs under Debian's ``/usr/bin/python3`` inside the Orthanc process, so it may use only the
standard library and Debian packages: ``python3-jwt`` (PyJWT 2.6) and ``python3-cryptography``.
Orthanc loads it from the plugin bundle (``pacs-bridge plugin bundle OUT``, see
:mod:`bridge.deploy.plugin_bundle`): this module, the other plugin modules of ``bridge.pacs`` and
:mod:`bridge.core` (verifier, route table, permission vocabulary, audit event model), which are
stdlib-only on purpose; never from the bridge's checkout.

Fail closed: every request is denied unless :class:`bridge.pacs.gate.Gate` allows it; no
configuration, a broken configuration, or any exception is a denial.  An exception escaping the
callback would make Orthanc answer 500 and log a traceback; returning anything but a ``bool``
does the same.  Orthanc answers ``False`` with 403 and an empty body (a filter cannot send 401 or
``WWW-Authenticate``).

Besides the filter it registers REST callbacks that answer the listing routes (``/patients``,
``/studies``, ``/series``, ``/instances``, ``/tools/find``) and ``/dicom-web/`` themselves, filtered for
tokens whose ``view`` is limited (:mod:`bridge.pacs.listing`, :mod:`bridge.pacs.dicomweb`); they take the
token's grants only from the context the filter stored for the same HTTP thread.

With a ``storage`` object in its settings it also registers the encrypted image store
(:mod:`bridge.pacs.storage_area`), once, when Orthanc loads it: every attachment Orthanc writes is
encrypted, and a file that does not open is a read error and a ``storage.integrity_failure`` audit event.

The ``orthanc`` module exists only inside Orthanc; the import is guarded so that unit tests can
import this module (it then denies everything).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

try:  # only inside Orthanc
    import orthanc  # type: ignore[import-not-found]
except ImportError:  # unit tests, tooling
    orthanc = None

import bridge
from bridge.core import envelope, token_format
from bridge.pacs import dicomweb, listing, orthanc_rest, plugin_config, storage_area
from bridge.pacs.gate import Gate, clear_request_context, current_request


def _log(message: str) -> None:
    if orthanc is not None:
        orthanc.LogWarning("pacs-bridge: " + message)


class _Holder:
    """The current :class:`Gate`, rebuilt when the config file changes (checked every few seconds).

    The check runs on a request (no thread of its own to wake up), so it is kept to one
    ``os.stat``: Orthanc's own configuration cannot change while Orthanc runs, so its plugin
    section is read once (``orthanc.GetConfiguration`` serialises the whole configuration).
    """

    def __init__(self) -> None:
        self.gate: Gate | None = None
        self.section: dict[str, Any] | None = None
        self.path: str | None = None
        self.stamp: tuple[float, int] | None = None
        self.next_check = 0.0
        self.lock = threading.Lock()
        #: Orthanc's own HTTP port, whether it is HTTPS, and its certificate, for the loopback calls
        self.http: tuple[int, bool, str | None] = (8042, False, None)
        #: Orthanc's built-in REST API (GET, POST) through the GIL-free library, once found: :func:`_rest_api`
        self.rest: tuple[Any, Any] | None = None

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
        if self.section is None:
            whole = json.loads(orthanc.GetConfiguration())
            self.section = whole.get(plugin_config.ORTHANC_SECTION) or {}
            # the loopback DICOMweb pass pins Orthanc's own HTTPS certificate (dicomweb.loopback_sender)
            self.http = (int(whole.get("HttpPort", 8042)), bool(whole.get("SslEnabled", False)),
                         whole.get("SslCertificate") or None)
        section = self.section
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
        if self.rest is None:  # kept once found; looked for again at the next reload
            self.rest = _rest_api()
        rest_get, rest_post = self.rest or (orthanc.RestApiGet, orthanc.RestApiPost)
        gate = Gate(config, rest_get, rest_post, send=dicomweb.loopback_sender(*self.http))
        gate.audit.spool_keys = SPOOL_KEYS  # the audit spool sealed under the storage KEK too
        gate.start()
        self._replace(gate)
        self.next_check = time.monotonic() + config.reload_check_seconds
        _log(f"configuration loaded from {config.source} (issuer {config.issuer}, audience {config.audience})")

    def _replace(self, gate: Gate | None) -> None:
        old, self.gate = self.gate, gate
        if old is not None:  # flush its audit queue without blocking a request
            threading.Thread(target=old.stop, name="pacs-bridge-old-gate", daemon=True).start()


def _rest_api() -> tuple[Any, Any] | None:
    """GET and POST on Orthanc's built-in REST API through the GIL-free library when Orthanc loaded
    it (:mod:`bridge.pacs.orthanc_rest`, why: a deadlock); None, logged, when it did not (the caller
    then uses orthanc-python's own calls)."""
    try:
        rest = orthanc_rest.load(orthanc.OrthancException)
    except (OSError, AttributeError) as exc:
        rest = None
        _log(f"{orthanc_rest.LIBRARY} unusable ({type(exc).__name__}: {exc})")
    if rest is None:
        _log(f"{orthanc_rest.LIBRARY} is not loaded: the plugin's REST calls hold Python's lock, which can "
             "deadlock Orthanc while a study is deleted (list it first in Orthanc's Plugins; docs/deploy.md)")
        return None
    _log(f"REST calls through {orthanc_rest.LIBRARY}, without Python's lock")
    return rest.get, rest.post


HOLDER = _Holder()
#: the storage KEK's key provider when the encrypted storage area is on: the audit spool uses it
SPOOL_KEYS: Any = None


class _OrthancLogHandler(logging.Handler):
    """The core's warnings (``pacs_bridge.*`` loggers, e.g. a refused token format) into Orthanc's log."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never change a decision
            _log(record.getMessage())


def _announce() -> None:
    """Route the core's log to Orthanc and say which bundle and token format this plugin is."""
    core_log = logging.getLogger("pacs_bridge")
    core_log.addHandler(_OrthancLogHandler())
    core_log.setLevel(logging.WARNING)
    _log(f"plugin bundle {getattr(bridge, 'BUNDLE_VERSION', 'unbundled ' + bridge.__version__)}, token format "
         f"{token_format.CURRENT} (reads {', '.join(map(str, sorted(token_format.UNDERSTOOD)))})")


class _Profile:
    """Debug only (``PACS_BRIDGE_PLUGIN_PROFILE=<file>`` in Orthanc's environment): times every filter
    call and rewrites ``<file>`` as JSON every ``every`` calls.

    Why timestamps and not just durations: ``time.perf_counter_ns`` is CLOCK_MONOTONIC, the same
    clock in every process, so a client that records its own send/receive times can split a
    request's latency into "before the filter" (Orthanc + taking the GIL), "in the filter" and
    "after" (Orthanc serving it).  Off by default: the hot path then pays one ``is None`` test.
    """

    def __init__(self, path: str, every: int = 500, keep: int = 10_000) -> None:
        self.path, self.every, self.keep = path, every, keep
        self.calls: list[tuple[int, int]] = []
        self.count = 0
        self.total_ns = 0

    def add(self, enter: int, leave: int) -> None:
        self.count += 1
        self.total_ns += leave - enter
        if len(self.calls) < self.keep:
            self.calls.append((enter, leave))
        if self.count % self.every == 0:
            self.dump()

    def dump(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"count": self.count, "total_ns": self.total_ns, "calls": self.calls,
                       "threads": [t.name for t in threading.enumerate()]}, fh)
        os.replace(tmp, self.path)


PROFILE = _Profile(os.environ["PACS_BRIDGE_PLUGIN_PROFILE"]) if os.environ.get("PACS_BRIDGE_PLUGIN_PROFILE") else None


def _gilstate_ensure() -> Any:
    """``PyGILState_Ensure`` of the interpreter we run in (None when ctypes cannot reach it)."""
    try:
        import ctypes

        fn = ctypes.pythonapi.PyGILState_Ensure
    except (ImportError, AttributeError, OSError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


_GILSTATE_ENSURE = _gilstate_ensure() if orthanc is not None else None
_PINNED = threading.local()


def _pin_thread_state() -> None:
    """Keep this Orthanc HTTP thread's Python thread state alive between requests.

    Why: orthanc-python 4.0 wraps every callback in ``PyGILState_Ensure``/``PyGILState_Release``.
    On one of Orthanc's HTTP threads no thread state exists between callbacks, so each request
    creates a fresh one and destroys it afterwards: allocate and link the state, ``mmap`` a new
    frame stack (and fault its pages in), then ``munmap`` it, which makes the kernel flush the
    TLBs of the CPUs running Orthanc's other ~70 threads.  ``strace`` of Orthanc showed one
    ``mmap``/``munmap`` pair and a ``gettid`` per request; pinned, they are gone.  One extra
    ``PyGILState_Ensure`` per thread, never released, raises the state's use count so the
    callback's ``Release`` keeps it (and still releases the GIL).  A ``threading.local`` lives in
    the thread state, so "not pinned yet" is exactly "fresh state": a reused thread id cannot fool it.
    Cost: one thread state per HTTP worker thread (``HttpThreadsCount``, 50 by default).
    """
    if _GILSTATE_ENSURE is None or getattr(_PINNED, "done", False):
        return
    _PINNED.done = True
    _GILSTATE_ENSURE()


def decide(uri: str, method: int, headers: dict[str, str], get: dict[str, str] | None, ip: str = "") -> bool:
    """Whether to let the request through (False whenever the plugin is not configured)."""
    gate = HOLDER.current()
    if gate is None:
        return False
    return gate.decide(uri, method, headers, get, ip)


def audited_address(peer: str, headers: dict[str, str]) -> str:
    """The workstation's address for the audit trail (the gateway's header, trusted only from the
    configured gateway addresses: :meth:`PluginConfig.audited_address`); the peer otherwise."""
    gate = HOLDER.gate
    return gate.config.audited_address(peer, headers) if gate is not None else peer


def incoming_http_request_filter(uri: str, **kwargs: Any) -> bool:
    """Orthanc's callback: ``(uri, method=int, ip=str, headers=dict[, get=dict])``; never raises."""
    enter = time.perf_counter_ns() if PROFILE is not None else 0
    try:
        _pin_thread_state()
        clear_request_context()
        headers = kwargs.get("headers") or {}
        verdict = decide(uri, int(kwargs.get("method", 0)), headers, kwargs.get("get"),
                         audited_address(str(kwargs.get("ip") or ""), headers))
        allowed = verdict is True
    except Exception:  # fail closed: any error is a denial, never a 500
        allowed = False
    if PROFILE is not None:
        with contextlib.suppress(Exception):  # a debug aid must never change a decision
            PROFILE.add(enter, time.perf_counter_ns())
    return allowed


def _origins() -> dict[int, str]:
    """orthanc.InstanceOrigin values -> the names :meth:`Gate.admit_instance` uses."""
    if orthanc is None:
        return {}
    o = orthanc.InstanceOrigin
    return {int(o.DICOM_PROTOCOL): "dicom", int(o.REST_API): "rest", int(o.PLUGIN): "plugin",
            int(o.LUA): "lua", int(o.WEB_DAV): "webdav", int(o.UNKNOWN): "unknown"}


_ORIGINS = _origins()


def _tags_of(data: bytes) -> dict[str, Any]:
    """The instance's tags as keyword -> value, parsed by Orthanc itself (no DICOM library needed)."""
    parsed = json.loads(orthanc.CreateDicomInstance(data).GetInstanceSimplifiedJson())
    return parsed if isinstance(parsed, dict) else {}


def admit_instance(data: bytes, origin: int) -> bool:
    """Whether to store an incoming instance; C-STORE (DICOM origin) always passes, since Orthanc
    itself admits only configured modalities; anything else needs a configured gate."""
    name = _ORIGINS.get(int(origin), "unknown")
    if name == "dicom":
        return True
    gate = HOLDER.current()
    if gate is None:
        return False
    return gate.admit_instance(name, lambda: _tags_of(data))


def received_instance_callback(data: bytes, origin: Any) -> tuple[Any, None]:
    """Orthanc's ``RegisterReceivedInstanceCallback`` (orthanc-python 4.0): keep or discard; never raises."""
    try:
        keep = admit_instance(data, origin) is True
    except Exception:  # fail closed: a bug discards the instance (C-STORE is decided before any parsing)
        keep = False
    action = orthanc.ReceivedInstanceAction
    return (action.KEEP_AS_IS if keep else action.DISCARD), None


def _changes() -> dict[int, str]:
    """orthanc.ChangeType values -> the names :meth:`Gate.changed` uses (the ones the scope cache follows)."""
    if orthanc is None:
        return {}
    c = orthanc.ChangeType
    return {int(c.DELETED): "deleted", int(c.NEW_STUDY): "new-study", int(c.NEW_INSTANCE): "new-instance"}


_CHANGES = _changes()


def on_change(change_type: Any, level: Any, resource_id: str) -> None:
    """Orthanc's ``RegisterOnChangeCallback``: keep the scope cache in step with the stored studies.

    Why: a scope decision read from the cache must not outlive what it was read from (a study deleted
    and stored again under another department keeps its Orthanc ids; a patient gains another
    department's study).  Orthanc calls it from its change thread, moments after the change.
    Never raises (a failure is logged).
    """
    try:
        name = _CHANGES.get(int(change_type))
        if name is None:
            return
        gate = HOLDER.gate
        if gate is None:
            return
        if name == "new-instance":  # the audit trail of C-STOREs (origin read off this thread)
            gate.audit.record_stored(resource_id)
        else:
            gate.changed(name)
    except Exception as exc:  # a callback must not raise into Orthanc
        _log(f"change callback failed ({type(exc).__name__}): the scope cache may be stale")


# ------------------------------------------------------------------ REST callbacks: filtered listings, /dicom-web/

#: Orthanc error codes (OrthancPluginErrorCode) -> the HTTP status the core would answer; others 400/500
_ERROR_STATUS = {2: 501, 7: 404, 13: 404, 17: 404, 21: 404, 27: 404, 29: 401, 34: 406, 36: 503, 41: 416,
                 42: 503, 43: 409, 19: 507}
_CLIENT_ERRORS = frozenset({3, 5, 6, 8, 12, 15, 22, 23, 24, 28, 33, 38})


def _status_of(exc: BaseException) -> int:
    """The HTTP status for an exception of ``orthanc.RestApi*`` (its first argument is the error code)."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
    if code in _ERROR_STATUS:
        return _ERROR_STATUS[code]
    return 400 if code in _CLIENT_ERRORS else 500


def _send_status(output: Any, status: int, body: bytes) -> None:
    """An error status with a body (orthanc-python 4.0: ``SendHttpStatus(status, str, size)``)."""
    text = body.decode("utf-8", errors="replace")
    output.SendHttpStatus(status, text, len(text.encode("utf-8")))


def _send(output: Any, answer: listing.Answer | dicomweb.Multipart) -> None:
    if isinstance(answer, dicomweb.Multipart):
        _send_multipart(output, answer)
    elif answer.status == 200:
        output.AnswerBuffer(answer.body, answer.mime)
    elif answer.status == 405:
        output.SendMethodNotAllowed("GET")
    elif answer.body and answer.status >= 400:
        _send_status(output, answer.status, answer.body)
    else:
        output.SendHttpStatusCode(answer.status)


def _send_multipart(output: Any, answer: dicomweb.Multipart) -> None:
    """Pass a multipart answer on part by part (one part in memory at a time).  Once started, a failure
    can only cut the answer short (the status is sent): it is logged."""
    try:
        output.StartMultipartAnswer(answer.subtype, answer.part_type)
        for part in answer.parts:
            output.SendMultipartItem(part)
    except Exception as exc:
        _log(f"a multipart answer was cut short ({type(exc).__name__})")
    finally:
        answer.close()


def _context_for(uri: str, method: str) -> tuple[Gate, Any] | None:
    """The gate and the filter's context for THIS request, or None (the callback then answers 403).

    The token's grants come only from the context the filter stored for this HTTP thread a moment ago
    (never from a header); a context of another request (path or method differ) does not count."""
    gate = HOLDER.gate
    context = current_request()
    if gate is None or context is None or context.method != method or not listing.same_request(context.uri, uri):
        return None
    return gate, context


def _serve(output: Any, uri: str, request: dict[str, Any], handler: Any) -> None:
    """Run ``handler(gate, context, method)`` -> Answer, and send it; fail closed on every error."""
    method = str(request.get("method", ""))
    try:
        found = _context_for(uri, method)
        if found is None:
            output.SendHttpStatusCode(403)
            return
        _send(output, handler(found[0], found[1], method))
    except listing.Refused as exc:
        _send_status(output, exc.status, exc.reason.encode("utf-8"))
    except Exception as exc:  # an error of the core (bad request...) or a bug: never an unfiltered answer
        status = _status_of(exc) if orthanc is not None and isinstance(exc, orthanc.OrthancException) else 500
        if status == 500:
            _log(f"{method} {uri}: {type(exc).__name__} in the plugin's callback")
        output.SendHttpStatusCode(status)


def listing_callback(output: Any, uri: str, **request: Any) -> None:
    """``GET /patients|studies|series|instances``; ``POST /instances`` (upload) goes to the core as is."""
    def handle(gate: Gate, context: Any, method: str) -> listing.Answer:
        level = uri.strip("/")
        if method == "GET":
            return gate.lister.list_resources(level, request.get("get") or {}, context.grants)
        if method == "POST" and level == "instances":
            return listing.Answer(200, gate.lister._raw(gate.lister.rest_post("/instances", request.get("body", b""))))
        return listing.Answer(405)

    _serve(output, uri, request, handle)


def find_callback(output: Any, uri: str, **request: Any) -> None:
    """``POST /tools/find``."""
    def handle(gate: Gate, context: Any, method: str) -> listing.Answer:
        if method != "POST":
            return listing.Answer(405)
        return gate.lister.find(request.get("body", b""), context.grants)

    _serve(output, uri, request, handle)


def dicomweb_callback(output: Any, uri: str, **request: Any) -> None:
    """``/dicom-web/...``: served through the DICOMweb plugin's internal root (:mod:`bridge.pacs.dicomweb`)."""
    def handle(gate: Gate, context: Any, method: str) -> listing.Answer:
        if gate.proxy is None:
            return listing.Answer(503)
        body = request.get("body") if method in ("POST", "PUT") else None
        return gate.proxy.serve(context, method, uri, request.get("get"), request.get("headers") or {}, body,
                                context.grants)

    _serve(output, uri, request, handle)


def _register_rest_callbacks() -> None:
    for level in listing.LIST_LEVELS:
        orthanc.RegisterRestCallback(f"/{level}", listing_callback)
    orthanc.RegisterRestCallback(listing.FIND, find_callback)
    orthanc.RegisterRestCallback(dicomweb.PUBLIC_ROOT + "(.*)", dicomweb_callback)


# ------------------------------------------------------------------ the encrypted image store


def _storage_failure(failure: storage_area.StorageFailure) -> None:
    """A stored file that did not open: into the audit trail (through the gate's shipper) and the log."""
    orthanc.LogError(f"pacs-bridge: storage {failure.operation} of attachment {failure.uuid} refused: "
                     f"{failure.reason}")
    gate = HOLDER.current()
    if gate is not None:
        gate.audit.record_event(failure.to_event(gate.config.pacs_name))


def storage_settings(whole: dict[str, Any], environ: Any = None) -> Any:
    """The ``storage`` settings: a :class:`StorageSettings`, None when not configured, or the reason
    (str) they cannot be read (then every storage call fails: nothing is stored in clear)."""
    section = whole.get(plugin_config.ORTHANC_SECTION) or {}
    path = plugin_config.locate(section, environ)
    source = path or f"Orthanc configuration, section {plugin_config.ORTHANC_SECTION}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")) if path else section
    except (OSError, ValueError) as exc:
        return f"{source}: cannot read the plugin configuration ({exc})"
    raw = storage_area.storage_section(data if isinstance(data, dict) else {})
    if raw is None:
        return None
    try:
        return storage_area.StorageSettings.from_mapping(raw, source)
    except storage_area.StorageConfigError as exc:
        return str(exc)


def _register_storage_area() -> None:
    """Register the encrypted storage area when the plugin's configuration has a ``storage`` object.

    Why at load time: Orthanc accepts a storage area only while plugins initialise, before it
    stores anything.  Settings that exist but do not work (no key file, wrong mode) register an
    area that refuses every call, never Orthanc's plaintext file storage."""
    whole = json.loads(orthanc.GetConfiguration())
    settings = storage_settings(whole)
    if settings is None:
        _log("no encrypted storage configured: Orthanc's own file storage (plaintext) is used")
        return
    area: Any
    if isinstance(settings, str):
        area = storage_area.UnavailableStorageArea(settings)
    else:
        try:
            area = storage_area.build(settings, sync=bool(whole.get("SyncStorageArea", True)),
                                      on_failure=_storage_failure)
        except (OSError, ValueError, envelope.EnvelopeError) as exc:
            area = storage_area.UnavailableStorageArea(str(exc))
    if isinstance(area, storage_area.UnavailableStorageArea):
        orthanc.LogError(f"pacs-bridge: encrypted storage unusable, every storage call fails: {area.reason}")
    else:
        global SPOOL_KEYS
        SPOOL_KEYS = area.keys
        _log(f"encrypted storage in {settings.directory} (key file {settings.kek_file}, current key "
             f"{area.keys.current_key_id()}, plaintext reads {'on' if settings.plaintext_reads else 'off'})")
    def create(uuid: str, content_type: int, data: bytes) -> None:
        _pin_thread_state()  # DICOM and job threads too, not only the HTTP ones the filter pins
        area.create(uuid, content_type, data)

    def read(uuid: str, content_type: int) -> bytes:
        _pin_thread_state()
        return area.read(uuid, content_type)

    def remove(uuid: str, content_type: int) -> None:
        _pin_thread_state()
        area.remove(uuid, content_type)

    orthanc.RegisterStorageArea(create, read, remove)


if orthanc is not None:
    _register_storage_area()
    _announce()
    _register_rest_callbacks()
    orthanc.RegisterIncomingHttpRequestFilter(incoming_http_request_filter)
    orthanc.RegisterReceivedInstanceCallback(received_instance_callback)
    orthanc.RegisterOnChangeCallback(on_change)
    HOLDER.current()  # load the configuration now, so a broken one shows in Orthanc's startup log
