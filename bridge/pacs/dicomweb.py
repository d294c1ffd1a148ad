"""``/dicom-web/`` served by the bridge's plugin in front of the DICOMweb plugin, which lives at an
internal root that nobody outside the Orthanc process can reach.

Why: QIDO-RS searches across studies, and Orthanc 1.10.1's request filter can only allow or deny a
whole request, so a department-scoped token was refused every QIDO query.  A Python REST callback
registered on ``/dicom-web/`` would shadow the DICOMweb plugin with no way to pass a request on to it,
so the DICOMweb plugin's ``Root`` is moved to :data:`INTERNAL_ROOT` (``bridge.deploy.orthanc_config``)
and the plugin serves ``/dicom-web/``:

* the request filter judges the PUBLIC path first, exactly as before (route table of
  :mod:`bridge.core.routes`, the studies a path or query names) -- nothing here judges again;
* QIDO-RS (``GET /dicom-web/studies|series|instances`` and the per-study / per-series forms) for a
  token without an unrestricted ``view`` grant: the DICOMweb plugin's answer filtered to the studies
  some ``view`` grant covers, with ``limit``/``offset`` applied AFTER filtering (the internal root is
  scanned in chunks in its own order; see :func:`qido`); ``includefield``, ``fuzzymatching`` and the
  attribute filters go through unchanged (``0020000D`` is added to ``includefield``: the filter needs
  each result's study);
* everything else (WADO-RS, STOW-RS, QIDO for unrestricted tokens, the plugin's static pages): passed
  through to the internal root, with the ``Accept``/``Content-Type``/``Host``/``Forwarded`` headers;
* URLs in JSON answers (``RetrieveURL`` 0008,1190 and ``BulkDataURI``) are rewritten from the
  internal root back to ``/dicom-web/``.

How a request reaches the internal root: over loopback HTTP to this same Orthanc, because
``orthanc.RestApiGetAfterPlugins`` carries no request headers and returns no content type (WADO-RS
and STOW-RS need both).  That inner request passes Orthanc's filter again; the filter lets it through
only to :data:`INTERNAL_ROOT`, only from loopback, and only with a one-time pass (:class:`Passes`)
issued in this process for the outer request a moment before -- and it hands the inner request the
OUTER request's context (token claims), so an upload through STOW-RS is still checked against the
uploader's scope.  Any other request to the internal root, with any token, in any spelling, is refused.

Known limits: the REST callback gets Orthanc's decoded GET arguments with one value per key, so a
repeated parameter reaches the DICOMweb plugin once (its last value, which is also what the filter
judged); ``includefield=a,b`` works.  A restricted token's QIDO answer is always JSON.  Answers are
buffered once in this process (orthanc-python 4.0 cannot stream a callback's answer).

Stdlib only (runs inside Orthanc).
"""

from __future__ import annotations

import hmac
import http.client
import io
import json
import re
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any, BinaryIO

from bridge.core import grants as grants_mod
from bridge.core.grants import Grant
from bridge.pacs.listing import VIEW, Answer, Refused, Visibility, raw_query
from bridge.pacs.scopes import StudyResolver

PUBLIC_ROOT = "/dicom-web/"
#: where the DICOMweb plugin is configured to live (``DicomWeb.Root``); never reachable from outside
INTERNAL_ROOT = "/pacs-bridge-internal/dicom-web/"
#: the marker the filter looks for, in any case or encoding, anywhere in a request path
_SQUASHED_MARKER = "pacsbridgeinternal"
#: the scheme of a one-time pass in the inner request's Authorization header
PASS_SCHEME = "PacsBridgeInternal"
PASS_SECONDS = 120.0
#: request headers passed to the DICOMweb plugin (the rest -- Authorization, cookies -- stay here)
FORWARDED_HEADERS = ("accept", "content-type", "host", "forwarded", "x-forwarded-host", "x-forwarded-proto")
#: QIDO-RS paths below the root: studies | series | instances, studies/{uid}/series|instances,
#: studies/{uid}/series/{uid}/instances
_QIDO = re.compile(r"(?:studies|series|instances|studies/[^/]+/(?:series|instances)"
                   r"|studies/[^/]+/series/[^/]+/instances)/?")
STUDY_UID_TAG = "0020000D"
RETRIEVE_URL_TAG = "00081190"
CHUNK_MIN, CHUNK_MAX = 100, 5000
_DECIMAL = re.compile(r"[0-9]{1,10}")


def looks_internal(uri: str) -> bool:
    """Does this request path aim at the internal root, in any spelling (case, percent-encoding,
    repeated or back slashes)?  Such a request is served only with a valid pass."""
    probe = uri
    for _ in range(3):
        decoded = urllib.parse.unquote(probe)
        if decoded == probe:
            break
        probe = decoded
    return _SQUASHED_MARKER in re.sub(r"[^a-z0-9]", "", probe.lower())


class Passes:
    """One-time passes binding an inner request to the outer request it serves.  Thread-safe."""

    def __init__(self, seconds: float = PASS_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self._open: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def issue(self, context: Any) -> str:
        """A fresh pass for ``context`` (the outer request's context): the Authorization header value."""
        value = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            for key in [k for k, (exp, _) in self._open.items() if exp <= now]:
                del self._open[key]
            self._open[value] = (now + self.seconds, context)
        return f"{PASS_SCHEME} {value}"

    def redeem(self, authorization: str | None, uri: str, ip: str) -> Any | None:
        """The outer context if this is a valid, unused, unexpired pass presented from loopback for
        a path under :data:`INTERNAL_ROOT` exactly; else None.  A pass works once."""
        if not authorization or not uri.startswith(INTERNAL_ROOT) or ip not in ("127.0.0.1", "::1"):
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme != PASS_SCHEME or not value:
            return None
        with self._lock:
            match = next((k for k in self._open if hmac.compare_digest(k, value)), None)
            if match is None:
                return None
            exp, context = self._open.pop(match)
        return context if exp > self.clock() else None


#: the plugin's passes (the filter redeems what the callback issues)
PASSES = Passes()

#: (method, path and query, headers, body) -> (status, content type, body or a readable stream of it)
Send = Callable[[str, str, Mapping[str, str], bytes | None], tuple[int, str, "bytes | BinaryIO"]]
#: bytes read from the DICOMweb plugin at a time while streaming a multipart answer
BLOCK = 1 << 16


class _Stream:
    """An inner answer being read (closes its connection when done)."""

    def __init__(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection):
        self.resp, self.conn = resp, conn

    def read(self, n: int = -1) -> bytes:
        return self.resp.read() if n < 0 else self.resp.read(n)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Multipart:
    """A multipart answer passed on part by part (``parts`` yields each part's body; ``close`` when done):
    the callback answers with ``StartMultipartAnswer``/``SendMultipartItem``, so at most one part is held."""

    subtype: str
    part_type: str
    parts: Iterator[bytes]
    close: Callable[[], None]


def multipart_params(mime: str) -> tuple[str, str, str] | None:
    """(subtype, type, boundary) of a ``multipart/...`` content type, or None."""
    message = Message()
    message["content-type"] = mime
    if message.get_content_maintype() != "multipart":
        return None
    boundary = message.get_param("boundary")
    part_type = message.get_param("type")
    if not isinstance(boundary, str) or not boundary or not isinstance(part_type, str) or not part_type:
        return None
    return message.get_content_subtype(), part_type, boundary


def iter_parts(stream: Any, boundary: str, block: int = BLOCK) -> Iterator[bytes]:
    """The bodies of a multipart stream's parts (RFC 2046), read ``block`` bytes at a time, holding at most
    one part and a block.  Raises ValueError on a stream that ends inside a part or has no delimiter."""
    delimiter = b"--" + boundary.encode("latin-1")
    between = b"\r\n" + delimiter
    buf = bytearray()
    eof = False

    def fill() -> bool:
        nonlocal eof
        if eof:
            return False
        data = stream.read(block)
        if not data:
            eof = True
            return False
        buf.extend(data)
        return True

    # the preamble, up to the first delimiter
    while (start := buf.find(delimiter)) < 0:
        if not fill():
            raise ValueError("multipart answer without a delimiter")
    del buf[:start + len(delimiter)]
    while True:
        while len(buf) < 2 and fill():
            pass
        if buf[:2] == b"--":  # the close delimiter
            return
        while (head_end := buf.find(b"\r\n\r\n")) < 0:
            if not fill():
                raise ValueError("multipart answer ends inside a part's headers")
        body_start = head_end + 4
        searched = body_start
        while (end := buf.find(between, searched)) < 0:
            searched = max(body_start, len(buf) - len(between))
            if not fill():
                raise ValueError("multipart answer ends inside a part")
        yield bytes(buf[body_start:end])
        del buf[:end + len(between)]


def pinned_context(own_certificate: str) -> ssl.SSLContext:
    """A client context that trusts exactly Orthanc's own certificate (the ``SslCertificate`` PEM;
    its private key in the same file is ignored).  The certificate names the host clients use, not
    127.0.0.1, so the host name is not checked: the pin to that one certificate replaces it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.load_verify_locations(cafile=own_certificate)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def loopback_sender(port: int, use_tls: bool = False, own_certificate: str | None = None,
                    timeout: float = 600.0) -> Send:
    """Requests to this Orthanc over loopback (a new connection each: no shared state between threads).

    Over HTTPS the peer must present ``own_certificate`` (Orthanc's ``SslCertificate``): the inner
    request carries a one-time pass and the outer request's token context, so it is sent to this
    Orthanc's own certificate only, never to whatever listens on the port."""
    context = pinned_context(own_certificate) if use_tls and own_certificate else None

    def send(method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> tuple[int, str, Any]:
        if use_tls:
            if context is None:
                raise ssl.SSLError("Orthanc serves HTTPS but its SslCertificate is unknown: nothing to pin")
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                                                           context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return resp.status, resp.getheader("Content-Type", "application/octet-stream"), _Stream(resp, conn)

    return send


def rewrite_urls(value: Any, base: str = INTERNAL_ROOT, public: str = PUBLIC_ROOT) -> Any:
    """``RetrieveURL`` values and ``BulkDataURI`` strings that point below the internal root, pointed
    below the public root instead (in place; returns ``value``).  Other strings are left alone."""

    def fix(url: str) -> str:
        parsed = urllib.parse.urlsplit(url)
        if parsed.path.startswith(base):
            return urllib.parse.urlunsplit(parsed._replace(path=public + parsed.path[len(base):]))
        return url

    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(x for x in item if isinstance(x, dict | list))
        elif isinstance(item, dict):
            for key, sub in item.items():
                if key == "BulkDataURI" and isinstance(sub, str):
                    item[key] = fix(sub)
                elif key == RETRIEVE_URL_TAG and isinstance(sub, dict) and isinstance(sub.get("Value"), list):
                    sub["Value"] = [fix(u) if isinstance(u, str) else u for u in sub["Value"]]
                elif isinstance(sub, dict | list):
                    stack.append(sub)
    return value


def _whole(stream: Any) -> bytes:
    try:
        return bytes(stream.read())
    finally:
        stream.close()


def _study_uid(item: Any) -> str:
    if isinstance(item, dict):
        values = (item.get(STUDY_UID_TAG) or {}).get("Value")
        if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
            return values[0]
    return ""


def is_qido(method: str, rel: str) -> bool:
    return method == "GET" and _QIDO.fullmatch(rel) is not None


def _is_json(mime: str) -> bool:
    base = mime.split(";", 1)[0].strip().lower()
    return base in ("application/json", "application/dicom+json")


@dataclass
class Proxy:
    """Serve one ``/dicom-web/...`` request through the internal root."""

    send: Send
    resolver: StudyResolver
    passes: Passes = PASSES

    def serve(self, context: Any, method: str, uri: str, get: Mapping[str, str] | None,
              headers: Mapping[str, str], body: bytes | None, grants: Iterable[Grant]) -> Answer | Multipart:
        if not uri.startswith(PUBLIC_ROOT):
            raise Refused(404, "not a DICOMweb path")
        rel = uri[len(PUBLIC_ROOT):]
        args = dict(get or {})
        held = tuple(grants)
        forward = {k: v for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
        if is_qido(method, rel) and not grants_mod.unrestricted(held, VIEW):
            return self.qido(context, rel, args, forward, held)
        status, mime, stream = self._open(context, method, rel, args, forward, body)
        params = multipart_params(mime) if status == 200 and method == "GET" else None
        if params is not None:  # WADO-RS retrieve, frames: passed on part by part, never held whole
            return Multipart(params[0], params[1], iter_parts(stream, params[2]), stream.close)
        data = _whole(stream)
        return Answer(status, self._rewritten(mime, data), mime)

    # ------------------------------------------------------------------ filtered QIDO

    def qido(self, context: Any, rel: str, args: dict[str, str], headers: Mapping[str, str],
             grants: tuple[Grant, ...]) -> Answer:
        """The paging algorithm of :mod:`bridge.pacs.listing`, over the DICOMweb plugin's own paging: ask
        for chunks (``offset``/``limit`` at the internal root, in its order), keep the results whose study
        a ``view`` grant covers, skip the first ``offset`` kept ones, stop once ``limit`` are kept or the
        plugin has no more.  A chunk grows (x2, up to 5,000) while the page is not full."""
        limit = self._int(args, "limit")
        offset = self._int(args, "offset") or 0
        inner = {k: v for k, v in args.items() if k not in ("limit", "offset")}
        fields = [f for f in inner.get("includefield", "").split(",") if f]
        if "all" not in fields:
            inner["includefield"] = ",".join([*fields, STUDY_UID_TAG])
        headers = {**headers, "accept": "application/dicom+json"}
        visibility = Visibility(grants, self.resolver)
        kept: list[Any] = []
        if limit == 0 or not visibility.grants:
            return Answer(200, b"[]", "application/dicom+json")
        want = None if limit is None else offset + limit
        chunk = min(CHUNK_MAX, max(CHUNK_MIN, 2 * (want or 0)))
        position = 0
        while True:
            query = {**inner, "offset": str(position), "limit": str(chunk)}
            status, mime, data = self._call(context, "GET", rel, query, headers, None)
            if status == 204 or (status == 200 and not data.strip()):
                break
            if status != 200:
                return Answer(status, data, mime)
            try:
                items = json.loads(data)
            except ValueError:
                raise Refused(502, "DICOMweb plugin: a QIDO answer that is not JSON") from None
            if not isinstance(items, list):
                raise Refused(502, "DICOMweb plugin: a QIDO answer that is not a list")
            kept.extend(i for i in items if visibility.uid(_study_uid(i)))
            if want is not None and len(kept) >= want:
                break
            if len(items) < chunk:
                break
            position += len(items)
            chunk = min(CHUNK_MAX, chunk * 2)
        result = kept[offset:] if limit is None else kept[offset:offset + limit]
        return Answer(200, json.dumps(rewrite_urls(result)).encode("utf-8"), "application/dicom+json")

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _int(args: Mapping[str, str], name: str) -> int | None:
        if name not in args:
            return None
        value = args[name]
        if _DECIMAL.fullmatch(value) is None or int(value) > 2**31 - 1:
            raise Refused(400, f"{name}: a decimal integer from 0 to {2**31 - 1} expected, got {value[:20]!r}")
        return int(value)

    def _open(self, context: Any, method: str, rel: str, args: Mapping[str, str], headers: Mapping[str, str],
              body: bytes | None) -> tuple[int, str, Any]:
        # Orthanc hands a callback the path percent-DEcoded (and the query as sent): encode the path again
        target = INTERNAL_ROOT + urllib.parse.quote(rel, safe="/") + raw_query(args)
        inner = dict(headers)
        inner["authorization"] = self.passes.issue(context)
        inner.setdefault("host", "127.0.0.1")
        status, mime, answer = self.send(method, target, inner, body)
        return status, mime, io.BytesIO(answer) if isinstance(answer, bytes | bytearray) else answer

    def _call(self, context: Any, method: str, rel: str, args: Mapping[str, str], headers: Mapping[str, str],
              body: bytes | None) -> tuple[int, str, bytes]:
        status, mime, stream = self._open(context, method, rel, args, headers, body)
        return status, mime, _whole(stream)

    @staticmethod
    def _rewritten(mime: str, data: bytes) -> bytes:
        if not _is_json(mime) or not data:
            return data
        try:
            parsed = json.loads(data)
        except ValueError:
            return data
        return json.dumps(rewrite_urls(parsed)).encode("utf-8")
