"""Audit events from the PACS: recorded in microseconds on the request path, shipped in the background.

Why this shape:

* The request filter runs under Orthanc's single Python lock, so it must not build XML, hash or
  open sockets.  :meth:`AuditShipper.record` appends one tuple to a deque; a daemon thread turns
  the tuples into :class:`bridge.core.audit_events.AuditEvent` s every ``flush_seconds``.
* A viewer fetching 300 frames of one study is one access, not 300 rows: requests with the same
  (user, token, study, action, outcome, reason) within one flush interval become **one** event
  whose ``details.requests`` counts them.  Every distinct denial and every study touched still
  gets its event.
* Nothing is lost: events go to the bridge's audit ingest endpoint (``POST {"events": [...]}``,
  bearer secret from a file); when the bridge is down or not configured they are appended to a
  JSONL spool file (fsync'd, 0600), and spool files are replayed, oldest first, once the bridge
  answers again.  A spool file is renamed before it is replayed, so two Orthanc processes sharing
  the directory never send the same file twice.
* Never dropped for its content: patient ids, study UIDs, usernames and paths are chosen by
  uploaders, modalities and clients; a value that looks like a credential or is otherwise unfit
  is normalised by the event model (bridge/core/audit_events.py, flagged in ``details.normalised``),
  and a group whose event cannot be built at all still yields a minimal event saying so.  (A
  PatientID ``Basic 4711`` once made the whole access vanish from the trail.)
* Refused DICOM associations: Orthanc 1.10.1 offers no callback for them (the C-STORE filter of
  orthanc-python 4.0 only sees instances of *accepted* associations), so the shipper tails
  Orthanc's log file and turns its "Rejected association" warnings, and its failed DICOM TLS
  handshakes (no, untrusted or foreign client certificate; plain DICOM), into events.
* Incoming C-FINDs: Orthanc's Lua ``IncomingFindRequestFilter`` (a script the configuration loads,
  bridge/deploy/orthanc_config.py) logs one line per query with the calling AE, address, level and
  the tags asked (no values); the shipper turns it into a ``study.queried`` event.  C-MOVE and C-GET
  have no such hook in Orthanc 1.10.1 and are not recorded (docs/encryption.md).
* Instances received by C-STORE: the plugin hands over each new instance's id (Orthanc's change
  callback; :meth:`AuditShipper.record_stored`).  Off the request path, the shipper reads the
  instance's metadata (``Origin``, ``RemoteAET``, ``RemoteIP``, ``CalledAET``: what Orthanc records at
  reception; the received-instance callback of orthanc-python 4.0 only tells "DICOM") and records one
  ``study.uploaded`` event per calling AE, address and study per flush, counting the instances.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bridge.core import audit_events as ev
from bridge.core.audit_codes import AuditEventType, Outcome
from bridge.core.envelope import EnvelopeError, KeyProvider
from bridge.core.sealed import LINE_PREFIX, PLUGIN_AUDIT_SPOOL, open_line, seal_line
from bridge.pacs.scopes import StudyInfo, StudyResolver, Target

#: permission of an allowed request naming a study -> the audit event type
ACCESS_EVENTS: dict[str, AuditEventType] = {
    "view": AuditEventType.STUDY_ACCESSED,
    "download": AuditEventType.STUDY_DOWNLOADED,
    "delete": AuditEventType.STUDY_DELETED,
    "modify": AuditEventType.STUDY_MODIFIED,
    "anonymize": AuditEventType.STUDY_MODIFIED,
    "send": AuditEventType.STUDY_SENT,
    "q-r-remote-modalities": AuditEventType.STUDY_QUERIED,  # C-FIND / C-MOVE / QIDO on a remote peer
    "upload": AuditEventType.STUDY_UPLOADED,
}
#: Orthanc 1.10.1's warnings for a refused association (CommandDispatcher.cpp)
REFUSED_UNKNOWN = re.compile(r"Rejected association for remote AET (\S+) on IP (\S+)")
REFUSED_CALLED = re.compile(r"Rejected association, because of a bad called AET in the request \((.*)\)")
#: ... and for a DICOM TLS handshake that failed (no certificate, an untrusted one, plain DICOM)
REFUSED_TLS = re.compile(r"Receiving Association failed: TLS error: (.*)")
#: the C-FIND audit script's line (bridge/deploy/orthanc_config.py FIND_AUDIT_SCRIPT), as Orthanc logs
#: a Lua print: anchored on Orthanc's own prefix, so no other log line (a URI, an AE title) can pose as one
DICOM_FIND = re.compile(r"^[EWI]\d{4} [\d:.]+\s+LuaContext\.cpp:\d+\] Lua says: pacs-bridge dicom-find (\{.*\})\s*$")
#: Orthanc's ``Origin`` metadata of an instance received by C-STORE
DICOM_ORIGIN = "DicomProtocol"
MAX_BATCH = 500
#: the associated-data name of every spool line (spool files are renamed before replay)
SPOOL_LINE_NAME = "plugin-audit-spool"


class AuditShipper:
    """Collects request outcomes, coalesces them, ships them to the bridge or a spool directory."""

    def __init__(
        self,
        *,
        source: str,
        issuer: str,
        spool_dir: str,
        audit_url: str | None = None,
        audit_token_file: str | None = None,
        ca_file: str | None = None,
        flush_seconds: float = 1.0,
        resolver: StudyResolver | None = None,
        orthanc_log_file: str | None = None,
        post: Callable[[str, bytes, dict[str, str]], int] | None = None,
    ):
        self.source = source
        self.issuer = issuer
        self.spool_dir = Path(spool_dir)
        self.audit_url = audit_url
        self.audit_token_file = audit_token_file
        self.flush_seconds = flush_seconds
        self.resolver = resolver
        self.orthanc_log_file = orthanc_log_file
        self._post = post or _https_post(ca_file)
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ready: collections.deque[ev.AuditEvent] = collections.deque()
        self._stored: collections.deque[tuple[float, str]] = collections.deque()
        self._log_offset = _file_size(orthanc_log_file)
        self._retry_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self.stats = {"sent": 0, "spooled": 0, "replayed": 0, "dropped_invalid": 0, "fallback": 0,
                      "corrupt_lines": 0}
        #: seals each spooled line under the Orthanc host's storage KEK (bridge/core/sealed.py):
        #: set by the plugin when the encrypted storage area is on; None writes plaintext
        self.spool_keys: KeyProvider | None = None

    # ------------------------------------------------------------------ hot path

    def record(
        self,
        kind: str,
        claims: dict[str, Any] | None,
        method: str,
        path: str,
        ip: str,
        permission: str | None,
        reason: str,
        target: Target | None = None,
        studies: list[StudyInfo] | None = None,
    ) -> None:
        """One request outcome (``kind`` = "allow" | "deny"); a deque append, nothing else."""
        self._queue.append((time.time(), kind, claims, method, path.split("?", 1)[0], ip, permission,
                            reason, target, studies))

    def record_event(self, event: ev.AuditEvent) -> None:
        """An event built elsewhere in the plugin (the storage area's integrity failures), shipped
        with the next batch; a deque append."""
        self._ready.append(event)

    def record_stored(self, instance_id: str) -> None:
        """An instance Orthanc has just stored (any origin); a deque append, nothing else."""
        self._stored.append((time.time(), instance_id))

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pacs-bridge-audit", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # noqa: S112 - the auditor must outlive any bad event
                continue

    def flush(self) -> int:
        """Turn what was recorded into events and ship them; returns the number of events."""
        with self._flush_lock:
            records = []
            while self._queue:
                records.append(self._queue.popleft())
            ready = []
            while self._ready:
                ready.append(self._ready.popleft())
            events = self._events(records) + self._cstores() + self._refused_associations() + ready
            payload = [e.to_dict() for e in events]
            if payload:
                self._ship(payload)
            self._replay_spool()
            return len(payload)

    # ------------------------------------------------------------------ building events

    def _events(self, records: Iterable[tuple[Any, ...]]) -> list[ev.AuditEvent]:
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for when, kind, claims, method, path, ip, permission, reason, target, studies in records:
            claims = claims if isinstance(claims, dict) else {}
            # a refusal for a missing permission is decided before its study is looked up: it is
            # resolved here too, or the refusal would be missing from the patient's access report
            if target is not None and studies is None and self.resolver is not None:
                try:
                    studies = self.resolver.last_known(target)  # the study may be gone by now
                except Exception:  # the access is still recorded, without its study
                    studies = None
            study_keys = tuple(sorted((_key(s.study_uid), _key(s.patient_id)) for s in studies or ()))
            key = (kind, _key(claims.get("sub")), _key(claims.get("jti")), _key(ip), permission, _key(reason),
                   study_keys, target is None)
            group = groups.get(key)
            if group is None:
                groups[key] = {"first": when, "last": when, "count": 1, "claims": claims, "kind": kind,
                               "method": method, "paths": [path], "ip": ip, "permission": permission,
                               "reason": reason, "studies": studies or [], "target": target}
            else:
                group["last"] = when
                group["count"] += 1
                if len(group["paths"]) < 5 and path not in group["paths"]:
                    group["paths"].append(path)
        out: list[ev.AuditEvent] = []
        for g in groups.values():
            try:
                out.append(self._event(g))
            except Exception as exc:  # never dropped: a minimal event says what happened
                self.stats["fallback"] += 1
                out.append(self._fallback_event(g, exc))
        return out

    def _fallback_event(self, g: dict[str, Any], exc: Exception) -> ev.AuditEvent:
        deny = g["kind"] == "deny"
        return ev.AuditEvent(
            type=AuditEventType.ACCESS_DENIED if deny else AuditEventType.STUDY_ACCESSED,
            outcome=Outcome.MINOR_FAILURE if deny else Outcome.SUCCESS,
            actor=ev.Actor(network_address=g["ip"] or None),
            details={"pacs": self.source, "requests": g["count"], "paths": g["paths"],
                     "audit_error": f"event could not be built: {type(exc).__name__}"},
            time=_utc(g["last"]),
        )

    def _event(self, g: dict[str, Any]) -> ev.AuditEvent:
        claims = g["claims"]
        sub = claims.get("sub")
        # values of a verified token, yet the model still normalises them (odd types included)
        actor = ev.Actor(
            user_id=f"{sub}@{claims.get('iss', self.issuer)}" if sub else None,
            username=claims.get("preferred_username"),
            client_id=claims.get("client_id"),
            network_address=g["ip"] or None,
        )
        objects: list[ev.ParticipantObject] = []
        for s in g["studies"]:
            if s.study_uid:
                objects.append(ev.study(s.study_uid))
            if s.patient_id:
                objects.append(ev.patient(s.patient_id))
        if claims.get("jti"):
            objects.append(ev.token(claims["jti"]))
        details = {
            "pacs": self.source,
            "method": g["method"],
            "paths": g["paths"],
            "permission": g["permission"],
            "requests": g["count"],
            "first_seen": ev.format_time(_utc(g["first"])),
            # a denial: why no grant fits; an access: the route and the grant that allowed it
            "reason": g["reason"],
        }
        purposes = purpose_of_use(claims)
        if purposes:
            details["purpose_of_use"] = purposes
        # the studies' departments, so the access review can count accesses outside a scoped role
        departments = sorted({s.department for s in g["studies"] if s.department})
        if departments:
            details["departments"] = departments
        if g["kind"] == "deny":
            etype, outcome = AuditEventType.ACCESS_DENIED, Outcome.MINOR_FAILURE
        else:
            etype = ACCESS_EVENTS.get(g["permission"] or "", AuditEventType.STUDY_ACCESSED)
            if g["target"] is None and g["permission"] == "view":
                etype = AuditEventType.STUDY_QUERIED
            outcome = Outcome.SUCCESS
        return ev.AuditEvent(type=etype, outcome=outcome, actor=actor, objects=tuple(objects),
                             details=details, description=g["reason"], time=_utc(g["last"]))

    def _cstores(self) -> list[ev.AuditEvent]:
        """The instances recorded by :meth:`record_stored` that came by C-STORE, as events."""
        if self.resolver is None:
            self._stored.clear()
            return []
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        while self._stored:
            when, instance_id = self._stored.popleft()
            try:
                meta = json.loads(self.resolver.rest_get(f"/instances/{instance_id}/metadata?expand"))
            except Exception:  # noqa: S112 - deleted in between: nothing left to say where it came from
                continue
            if not isinstance(meta, dict) or meta.get("Origin") != DICOM_ORIGIN:
                continue  # REST / DICOMweb uploads are audited by the request filter
            studies = self.resolver.studies(Target("instances", instance_id))
            aet, ip, called = (str(meta.get(k) or "") for k in ("RemoteAET", "RemoteIP", "CalledAET"))
            key = (aet, ip, called, tuple((_key(s.study_uid), _key(s.patient_id)) for s in studies))
            group = groups.setdefault(key, {"first": when, "count": 0, "studies": studies})
            group["last"], group["count"] = when, group["count"] + 1
        out = []
        for (aet, ip, called, _studies), g in groups.items():
            objects = [ev.ParticipantObject(ev.ObjectKind.NODE, aet or "(empty)")]
            for s in g["studies"]:
                if s.study_uid:
                    objects.append(ev.study(s.study_uid))
                if s.patient_id:
                    objects.append(ev.patient(s.patient_id))
            out.append(ev.AuditEvent(
                type=AuditEventType.STUDY_UPLOADED,
                actor=ev.Actor(username=aet or None, network_address=ip or None),
                objects=tuple(objects),
                details={"pacs": self.source, "operation": "C-STORE", "calling_aet": aet, "called_aet": called,
                         "instances": g["count"], "first_seen": ev.format_time(_utc(g["first"]))},
                description=f"C-STORE from {aet or '(empty AE title)'}",
                time=_utc(g["last"]),
            ))
        return out

    def _refused_associations(self) -> list[ev.AuditEvent]:
        """New "Rejected association" lines of Orthanc's log, as events."""
        path = self.orthanc_log_file
        if not path:
            return []
        size = _file_size(path)
        if size < self._log_offset:  # rotated or truncated: start over
            self._log_offset = 0
        if size == self._log_offset:
            return []
        with open(path, "rb") as fh:
            fh.seek(self._log_offset)
            chunk = fh.read(size - self._log_offset)
        complete = chunk.rfind(b"\n") + 1
        self._log_offset += complete
        out = []
        for line in chunk[:complete].decode("utf-8", "replace").splitlines():
            m = DICOM_FIND.match(line)
            if m:
                out.extend(self._find_event(m.group(1)))
                continue
            m = REFUSED_UNKNOWN.search(line)
            if m:
                aet, ip, why = m.group(1), m.group(2), "calling AE title/host not a configured modality"
            elif m := REFUSED_CALLED.search(line):
                aet, ip, why = m.group(1), None, "called AE title is not this PACS"
            elif m := REFUSED_TLS.search(line):
                # before any AE title is known; Orthanc does not log the peer's address here
                aet, ip, why = "", None, f"DICOM TLS handshake failed: {m.group(1).strip()[:200]}"
            else:
                continue
            out.append(ev.AuditEvent(
                type=AuditEventType.DICOM_ASSOCIATION_REFUSED,
                actor=ev.Actor(network_address=ip),
                objects=(ev.ParticipantObject(ev.ObjectKind.NODE, aet or "(empty)"),),
                details={"pacs": self.source, "reason": why},
                description=why,
            ))
        return out

    def _find_event(self, payload: str) -> list[ev.AuditEvent]:
        """One incoming C-FIND (calling AE, address, level and the tags asked; never their values)."""
        try:
            q = json.loads(payload)
        except ValueError:
            return []
        if not isinstance(q, dict):
            return []
        aet, ip, called, level = (str(q.get(k) or "") for k in ("RemoteAet", "RemoteIp", "CalledAet", "Level"))
        keys = [str(k) for k in q.get("Keys") or [] if isinstance(k, str)][:50]
        return [ev.AuditEvent(
            type=AuditEventType.STUDY_QUERIED,
            actor=ev.Actor(username=aet or None, network_address=ip or None),
            objects=(ev.ParticipantObject(ev.ObjectKind.NODE, aet or "(empty)"),),  # the SOP class is not logged
            details={"pacs": self.source, "operation": "C-FIND", "calling_aet": aet, "called_aet": called,
                     "level": level, "keys": keys},
            description=f"C-FIND from {aet or '(empty AE title)'}",
        )]

    # ------------------------------------------------------------------ shipping

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.audit_token_file:
            secret = Path(self.audit_token_file).read_text(encoding="utf-8").strip()
            headers["Authorization"] = "Bearer " + secret
        return headers

    def _send(self, payload: list[dict[str, Any]]) -> bool:
        if not self.audit_url or time.monotonic() < self._retry_at:
            return False
        try:
            for i in range(0, len(payload), MAX_BATCH):
                body = json.dumps({"events": payload[i:i + MAX_BATCH]}).encode()
                status = self._post(self.audit_url, body, self._headers())
                if not 200 <= status < 300:
                    raise OSError(f"audit ingest answered {status}")
        except Exception:
            self._retry_at = time.monotonic() + 5.0
            return False
        return True

    def _ship(self, payload: list[dict[str, Any]]) -> None:
        if self._send(payload):
            self.stats["sent"] += len(payload)
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spool = self.spool_dir / f"spool-{os.getpid()}.jsonl"
        fd = os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, self._spool_lines(payload))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats["spooled"] += len(payload)

    def _replay_spool(self) -> None:
        if not self.audit_url or time.monotonic() < self._retry_at or not self.spool_dir.is_dir():
            return
        if not _own_private(self.spool_dir, directory=True):
            self.stats["untrusted_spool"] = self.stats.get("untrusted_spool", 0) + 1
            return  # someone else can write here: replaying would let them forge records
        spools = [p for p in self.spool_dir.glob("spool-*.jsonl") if _own_private(p)]
        for spool in sorted(spools, key=lambda p: p.stat().st_mtime):
            sending = spool.with_name(f"sending-{os.getpid()}-{time.time_ns()}.jsonl")
            try:
                spool.rename(sending)
            except OSError:
                continue  # another process took it
            self._replay_file(sending)
        for sending in self.spool_dir.glob(f"sending-{os.getpid()}-*.jsonl"):
            if _own_private(sending):
                self._replay_file(sending)  # left over from a failed attempt of this process

    def _spool_lines(self, payload: list[dict[str, Any]]) -> bytes:
        """Spool lines for ``payload``: JSON, each sealed when the storage KEK is there (the
        events name patients and studies)."""
        out = []
        for e in payload:
            line = json.dumps(e).encode()
            if self.spool_keys is not None:
                line = seal_line(self.spool_keys, SPOOL_LINE_NAME, PLUGIN_AUDIT_SPOOL, line)
            out.append(line + b"\n")
        return b"".join(out)

    def _unseal(self, raw: bytes) -> bytes:
        """One spool line's JSON (a plaintext line of an older plugin is read as it is)."""
        if self.spool_keys is None:
            if raw.startswith(LINE_PREFIX):
                raise EnvelopeError("unknown-key", "a sealed spool line, and no storage KEK configured")
            return raw
        return open_line(self.spool_keys, SPOOL_LINE_NAME, PLUGIN_AUDIT_SPOOL, raw, plaintext_ok=True)

    def _replay_file(self, path: Path) -> None:
        """Send one spool file.  A line that is not JSON (cut by a crash mid-write) would otherwise
        fail the file on every attempt and hold back every later file: it is moved to a
        ``corrupt-*.jsonl`` file (0600) for a human, and the rest is sent."""
        lines, bad = [], []
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            try:
                lines.append(json.loads(self._unseal(raw)))
            except (ValueError, EnvelopeError):
                bad.append(raw)
        if bad:
            corrupt = path.with_name(f"corrupt-{os.getpid()}-{time.time_ns()}.jsonl")
            fd = os.open(corrupt, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"".join(x + b"\n" for x in bad))
                os.fsync(fd)
            finally:
                os.close(fd)
            self.stats["corrupt_lines"] += len(bad)
            if not lines:
                path.unlink()
                return
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, self._spool_lines(lines))
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(path)  # a retry after a failed send must not copy the bad lines again
        if self._send(lines):
            path.unlink()
            self.stats["replayed"] += len(lines)


def purpose_of_use(claims: dict[str, Any]) -> list[str]:
    """The IHE IUA purpose of use codes of a token (``extensions.ihe_iua.purpose_of_use``, FHIR
    Codings), recorded with each access so a patient's access report says why (GDPR Art. 15).
    A claim of an odd shape yields what is usable of it, never an error."""
    ext = claims.get("extensions")
    iua = ext.get("ihe_iua") if isinstance(ext, dict) else None
    raw = iua.get("purpose_of_use") if isinstance(iua, dict) else None
    if isinstance(raw, dict | str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    codes = [c.get("code") if isinstance(c, dict) else c for c in raw[:8]]
    return [str(c)[:64] for c in codes if isinstance(c, str | int) and not isinstance(c, bool) and str(c)]


def _https_post(ca_file: str | None, timeout: float = 3.0) -> Callable[[str, bytes, dict[str, str]], int]:
    context = ssl.create_default_context(cafile=ca_file)

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - https only
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            return int(resp.status)

    return post


def _key(value: Any) -> Any:
    """A grouping key part: the value itself when hashable, else its repr (a claim may be a list)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _file_size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _own_private(path: Path, directory: bool = False) -> bool:
    """Whether ``path`` is ours alone: not a symlink, owned by this process's user, writable by
    nobody else.  The spool is replayed into the audit trail, so a file another local user could
    drop or edit there (or a symlink to one) would become forged records; such files are left
    alone (never replayed, never deleted) for a human to look at."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.geteuid() and not st.st_mode & 0o022
