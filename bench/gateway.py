"""Benchmarks of the browser path to the PACS (issue 11): one function per measurement, one JSON object.

    .venv/bin/python bench/gateway.py [--only NAME ...] [--skip NAME ...] [--studies 5000] [--n 300]
        [--archive-mb 200]

Where other dev stacks run on the same machine, run it in a private network namespace (the dev
stack's Samba ports are fixed), e.g. ``unshare --net`` with ``lo`` up and its own
``PACS_BRIDGE_DEVSTACK_DIR``.

``main`` runs the selected measurements and prints ONE JSON object with a key per measurement and the
load average before and after (the machine is shared; figures without the load are not comparable).

Measurements on a private Orthanc with the bridge plugin, pointed at a TLS bridge double (the
production code path of the plugin; no dev stack needed):

* :func:`scoped_find`: ``POST /tools/find`` over N studies (default 5,000, 5 % of them in the token's
  department) with a department-scoped token vs an unrestricted token (the core's query, passed
  through), for the whole list and for a page of 50 (also for a department holding 13 % of the
  studies); with a warm scope cache (after ``warmup_seconds`` of untimed queries: the plugin's study
  index builds in the background after the first restricted query), and cold (a fresh plugin
  configuration starts with an empty cache and no index).  Target (issue 11): warm scoped <= 2x unscoped.
* :func:`wado_retrieve_memory`: a WADO-RS retrieve of a large study through the public ``/dicom-web/``
  (served by the plugin in front of the DICOMweb plugin's internal root): Orthanc's resident memory
  before, its peak during (VmHWM), and the answer's size; the same on an Orthanc without the plugin.

Measurements of the gateway (``/pacs/``) against Orthanc directly with the same PACS token,
interleaved (one direct request, one through the gateway, so a change of load hits both alike).
They need the dev stack's bridge (with its gateway), Orthanc and PostgreSQL: ``main`` starts the
stack when it is not running and stops what it started.  A PACS token for ``rad.alice`` is issued
by the stack's own token service (grant read from the store) and a gateway session holding it is
created as a login would create it, so no Keycloak round trip is measured:

* :func:`small_json_get`: ``GET /studies/{id}`` direct, through the gateway, and the bridge's own
  floor ``GET /readyz`` (a database ping through the same web server/TLS hop): median and p99 of each,
  of the gateway's added latency, and of the gateway over the floor.  Target: added median < 1.5 ms,
  p99 < 5 ms.
* :func:`archive_stream`: a study archive of ``--archive-mb`` MB (random pixel data, so the ZIP does
  not shrink it) streamed by both paths: throughput (MB/s) and the bridge workers' resident memory
  growth (sampled every 20 ms while the gateway streams).  Target: >= 80 % of direct, < 50 MB growth.

The gateway session must finish before its token needs renewal (no refresh token here): the run
takes well under the token lifetime minus the renewal margin.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacs_devstack import process
from pacs_devstack.orthanc import OrthancService, connection
from pacs_devstack.pacs_double import BridgeDouble, dicom_instance
from pacs_devstack.service import StackContext
from pacs_devstack.tls import ensure_ca

UID_ROOT = "1.2.826.0.1.3680043.10.1137.4242"
SCOPE = "Bench-Cardio"


# ------------------------------------------------------------------ shared plumbing


class Client:
    """Keep-alive HTTPS to one Orthanc (verified against the stack CA), with a bearer token."""

    def __init__(self, port: int):
        self.port = port
        self.conn = connection(port, timeout=600)

    def call(self, method: str, path: str, token: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        h = {"Authorization": f"Bearer {token}", **(headers or {})}
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = connection(self.port, timeout=600)
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        return resp.status, resp.read()


def _token(bridge: BridgeDouble, grants: list[dict[str, Any]], departments: tuple[str, ...] = ()) -> str:
    """A token as the bridge mints it, with the ``grants`` claim (token format 2's decision claim)."""
    perms = sorted({p for g in grants for p in g["permissions"]})
    claims = bridge.claims(perms, departments=departments, lifetime=3600)
    claims["grants"] = grants
    return bridge.ring.sign(claims)


def _grant(permissions: list[str], departments: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "role", "role": "bench", "permissions": permissions,
            "scope": {"departments": departments} if departments else {}}


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000, 2),
            "n": len(ordered)}


def _rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ measurements


def scoped_find(client: Client, bridge: BridgeDouble, svc: OrthancService, studies: int, rounds: int = 15,
                cold_rounds: int = 3, warmup_seconds: float = 10.0) -> dict[str, Any]:
    """Scoped vs unscoped ``/tools/find`` over ``studies`` studies (5 % in scope), warm and cold scope cache."""
    upload = _token(bridge, [_grant(["upload", "view"])])
    in_scope = 0
    for n in range(studies):
        dept = SCOPE if n % 20 == 0 else f"Bench-Other-{n % 7}"
        in_scope += dept == SCOPE
        uid = f"{UID_ROOT}.{n}"
        data = dicom_instance(patient_id=f"B-{n % 1000}", patient_name="Bench^Find", study_uid=uid,
                              series_uid=uid + ".1", sop_uid=uid + ".1.1", department=dept)
        status, _ = client.call("POST", "/instances", upload, data, {"Content-Type": "application/dicom"})
        if status != 200:
            raise SystemExit(f"upload {n} answered {status}")
    scoped = _token(bridge, [_grant(["view"], [SCOPE])], (SCOPE,))
    wider = _token(bridge, [_grant(["view"], ["Bench-Other-0"])], ("Bench-Other-0",))  # 1 study in 7.5
    unscoped = _token(bridge, [_grant(["view"])])
    every = {"Level": "Study", "Query": {"PatientName": "Bench*"}}
    cases = {"all": (every, scoped), "page_of_50": ({**every, "Limit": 50}, scoped),
             "page_of_50_department_of_13_percent": ({**every, "Limit": 50}, wider)}
    out: dict[str, Any] = {"studies": studies, "in_scope": in_scope}

    def timed(token: str, body: dict[str, Any]) -> tuple[float, int]:
        t0 = time.perf_counter()
        status, answer = client.call("POST", "/tools/find", token, json.dumps(body).encode())
        elapsed = time.perf_counter() - t0
        if status != 200:
            raise SystemExit(f"/tools/find answered {status}")
        return elapsed, len(json.loads(answer))

    # warm first, for every case (one plugin configuration: the scope cache and the study index, which
    # builds in the background after the first restricted query, bridge/pacs/study_index.py, are
    # shared): untimed queries until the scoped query stops getting faster (steady state)
    warm_up = {"seconds": 0.0, "queries": 0}
    started = time.monotonic()
    best, since_best = float("inf"), 0
    while time.monotonic() - started < warmup_seconds * 6 and (since_best < 8
                                                                or time.monotonic() - started < warmup_seconds):
        elapsed = sum(timed(token, body)[0] for body, token in cases.values())
        warm_up["queries"] += len(cases)
        best, since_best = (elapsed, 0) if elapsed < best * 0.9 else (best, since_best + 1)
        time.sleep(0.3)
    warm_up["seconds"] = round(time.monotonic() - started, 1)
    out["warm_up"] = warm_up
    for label, (body, scoped) in cases.items():
        samples: dict[str, list[float]] = {"scoped_warm": [], "unscoped": []}
        counts = {}
        for r in range(rounds):  # interleaved: the machine's load changes within seconds
            for name, token in ((("scoped_warm", scoped), ("unscoped", unscoped)) if r % 2 == 0
                                else (("unscoped", unscoped), ("scoped_warm", scoped))):
                elapsed, count = timed(token, body)
                samples[name].append(elapsed)
                counts[name] = count
        row = {name: {**_stats(values), "results": counts[name]} for name, values in samples.items()}
        row["warm_ratio_scoped_over_unscoped"] = round(row["scoped_warm"]["median_ms"]
                                                       / row["unscoped"]["median_ms"], 2)
        out[label] = row
    for label, (body, scoped) in cases.items():  # cold last: each round starts a new configuration
        cold: list[float] = []
        for _ in range(cold_rounds):  # a rewritten plugin configuration: a new gate, an empty scope cache
            svc.plugin_config_file.write_text(svc.plugin_config_file.read_text())
            os.utime(svc.plugin_config_file, None)
            time.sleep(2.5)  # > reload_check_seconds
            client.call("GET", "/system", _token(bridge, [_grant(["settings"])]))  # let the reload happen
            cold.append(timed(scoped, body)[0])
        out[label]["scoped_cold"] = _stats(cold)
    return out


def wado_retrieve_memory(client: Client, bridge: BridgeDouble, instances: int = 40, pixels: int = 1024,
                         service: str = "orthanc-gateway-bench", path: str = "/dicom-web/studies/") -> dict[str, Any]:
    """A WADO-RS study retrieve through ``path`` (the plugin's ``/dicom-web/``, or the DICOMweb plugin's own
    root on an Orthanc without the bridge plugin, the baseline): answer size, Orthanc's RSS before and peak
    during."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    token = _token(bridge, [_grant(["upload", "view", "download"])])
    uid = f"{UID_ROOT}.999999"
    for k in range(instances):
        base = dicom_instance(patient_id="B-BIG", patient_name="Bench^Big", study_uid=uid, series_uid=uid + ".1",
                              sop_uid=f"{uid}.1.{k}", department=SCOPE)
        ds = dcmread(DicomBytesIO(base))
        ds.Rows = ds.Columns = pixels
        ds.PixelData = os.urandom(pixels * pixels * 2)
        buf = DicomBytesIO()
        ds.save_as(buf, write_like_original=False)
        status, _ = client.call("POST", "/instances", token, buf.getvalue(), {"Content-Type": "application/dicom"})
        if status != 200:
            raise SystemExit(f"large upload answered {status}")
    record = process.load(service)
    if record is None:
        raise SystemExit("cannot find Orthanc's pid")
    pid = record.pid
    runs = []
    for _ in range(2):  # the first read also fills Orthanc's storage cache (MaximumStorageCacheSize, 128 MB)
        time.sleep(1.0)
        before = _rss_kb(pid)
        peak = [before]
        done = threading.Event()

        def sample(peak: list[int] = peak, done: threading.Event = done) -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_kb(pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        status, body = client.call("GET", f"{path}{uid}", token)
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
        if status != 200:
            raise SystemExit(f"WADO-RS retrieve answered {status}")
        size_mb = len(body) / 2**20
        runs.append({"seconds": round(elapsed, 2), "orthanc_rss_before_mb": round(before / 1024, 1),
                     "orthanc_rss_peak_mb": round(peak[0] / 1024, 1),
                     "peak_growth_mb": round((peak[0] - before) / 1024, 1)})
        del body
    return {"path": path, "instances": instances, "answer_mb": round(size_mb, 1), "first": runs[0],
            "second": runs[1]}


# ------------------------------------------------------------------ the gateway (needs the dev stack)

GATEWAY_UID_ROOT = "1.2.826.0.1.3680043.10.1137.99"
#: the services the gateway measurements need (the bridge's own `needs` come with it)
GATEWAY_SERVICES = ("keycloak", "samba", "slapd", "redis", "bridge", "orthanc", "postgres", "rsyslog")


def _percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}


def _big_study(total_mb: int) -> list[bytes]:
    """Instances of ~10 MB of random 16-bit pixels, ``total_mb`` MB in all, one study."""
    import io
    import uuid

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    n = uuid.uuid4().int % 10**9
    side = 2236  # 2236 x 2236 x 2 bytes = 10 MB
    out = []
    for i in range(max(1, total_mb // 10)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = f"{GATEWAY_UID_ROOT}.{n}.3.{i}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, f"{GATEWAY_UID_ROOT}.{n}.3.{i}"
        ds.PatientID, ds.PatientName = f"BENCH-{n}", "BENCH^GATEWAY"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{GATEWAY_UID_ROOT}.{n}.1", f"{GATEWAY_UID_ROOT}.{n}.2"
        ds.Modality, ds.InstitutionName, ds.InstitutionalDepartmentName = "CT", "Hospital Test", "Radiology"
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = os.urandom(side * side * 2)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _worker_pids(master: int) -> list[int]:
    """The bridge's web server workers (children of ``master``)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == master:
            out.append(int(pid))
    return out


def _workers_rss_mb(pids: list[int]) -> float:
    """Resident memory (MB) of these processes.  The pids are found once, before the sampling: scanning
    all of /proc every 20 ms (hundreds of processes on a shared machine) took CPU from the gateway
    while it streamed, and only from the gateway's run."""
    total = 0
    for pid in pids:
        try:
            total += _rss_kb(pid)
        except OSError:
            continue
    return total / 1024


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _stream(http: Any, url: str, **kw: Any) -> tuple[int, float]:
    t = time.perf_counter()
    size = 0
    with http.get(url, stream=True, timeout=600, **kw) as r:
        r.raise_for_status()
        for chunk in r.iter_content(256 * 1024):
            size += len(chunk)
    return size, time.perf_counter() - t


class GatewayRig:
    """What the gateway measurements share: the stack's endpoints, a study, a gateway session and
    the same PACS token for the direct path.  :meth:`close` ends the session."""

    def __init__(self, archive_mb: int):
        from sqlalchemy import select

        from bridge.config import load_config
        from bridge.http import pinned_session
        from bridge.services import Services
        from bridge.store.db import session as db_session
        from bridge.store.models import RoleAssignment
        from bridge.tokens.claims import Subject
        from bridge.web.gateway.sessions import SessionStore, Tokens
        from bridge.web.gateway.views import COOKIE
        from pacs_devstack import state

        info = state.read_stack()
        settings = load_config(info["bridge"]["config"])
        if not settings.gateway.enabled or "orthanc" not in info:
            raise SystemExit("bench/gateway.py: the gateway measurements need the stack's bridge with its "
                             "gateway and Orthanc")
        services = Services(settings)
        tokens = services.token_service

        def token_for(username: str | None, role: str | None = None) -> Any:
            with db_session(services.engine) as s:
                column = RoleAssignment.username == username if username else RoleAssignment.role == role
                sub = s.scalar(select(RoleAssignment.subject_id).where(column))
            subject = Subject(id=str(sub), username=username or "bench-upload", auth_time=int(time.time()),
                              acr="mfa", amr=("pwd", "otp"))
            return subject, tokens.issue(subject, tokens.grant_for(subject), "gateway-bench")

        self.ca = info["ca"]["file"]
        self.orthanc = info["orthanc"]["url"]
        self.bridge_url = info["bridge"]["url"]
        self.gateway = self.bridge_url + settings.gateway.prefix
        record = process.load("bridge")
        if record is None:
            raise SystemExit("bench/gateway.py: cannot find the bridge's web server process")
        self.master = record.pid
        self.direct = pinned_session(self.ca)
        _, upload = token_for(None, role="technologist")  # the archive study, uploaded as a technologist would
        self.study_id = ""
        for data in _big_study(archive_mb):
            r = self.direct.post(self.orthanc + "/instances", data=data, timeout=120,
                                 headers={"Authorization": f"Bearer {upload.access_token}"})
            r.raise_for_status()
            self.study_id = r.json()["ParentStudy"]
        subject, issued = token_for("rad.alice")
        self.store = SessionStore.under_kek(services.engine, services.key_ring.encryptor)
        self.raw = self.store.create(subject_id=subject.id, kc_sub=subject.id, sid=None, username="rad.alice",
                                     tokens=Tokens(issued.access_token, None, None),
                                     token_exp=float(issued.claims["exp"]), lifetime_seconds=3600)
        self.auth = {"Authorization": f"Bearer {issued.access_token}"}
        self.via = pinned_session(self.ca)
        # the cookie as the browser sends it, a header set once (as the direct path's Authorization):
        # requests' cookie jar would add ~0.07 ms of client-side matching per request to one side only
        self.via.headers["Cookie"] = f"{COOKIE}={self.raw}"

    def close(self) -> None:
        from bridge.web.gateway.sessions import hash_id

        self.store.end(hash_id(self.raw))


def small_json_get(rig: GatewayRig, n: int = 300) -> dict[str, Any]:
    """``GET /studies/{id}`` direct vs through the gateway, with the bridge's ``/readyz`` as the floor of
    any request through the bridge (all three interleaved)."""
    direct_url, via_url = f"{rig.orthanc}/studies/{rig.study_id}", f"{rig.gateway}/studies/{rig.study_id}"
    floor_url = f"{rig.bridge_url}/readyz"
    for _ in range(20):  # warm both paths (connections, caches)
        rig.direct.get(direct_url, headers=rig.auth, timeout=10)
        rig.via.get(via_url, timeout=10)
        rig.via.get(floor_url, timeout=10)
    direct: list[float] = []
    via: list[float] = []
    floor: list[float] = []
    for _ in range(n):
        for client, url, kw, into in ((rig.direct, direct_url, {"headers": rig.auth}, direct),
                                      (rig.via, via_url, {}, via), (rig.via, floor_url, {}, floor)):
            t = time.perf_counter()
            status = client.get(url, timeout=10, **kw).status_code
            into.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise SystemExit(f"{url} answered {status}")
    return {"n": n, "direct": _percentiles(direct), "gateway": _percentiles(via),
            "bridge_readyz_floor": _percentiles(floor),
            "added": _percentiles([v - d for v, d in zip(via, direct, strict=True)]),
            "gateway_over_floor": _percentiles([v - f for v, f in zip(via, floor, strict=True)]),
            "target": "added median < 1.5 ms, p99 < 5 ms"}


def archive_stream(rig: GatewayRig) -> dict[str, Any]:
    """The study archive direct, through the gateway (workers' RSS sampled), direct again."""
    url = f"/studies/{rig.study_id}/archive"
    size_d, secs_d = _stream(rig.direct, rig.orthanc + url, headers=rig.auth)
    workers = _worker_pids(rig.master)
    before = _workers_rss_mb(workers)
    cpu_before = _cpu_seconds(workers)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _workers_rss_mb(workers))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size_g, secs_g = _stream(rig.via, rig.gateway + url)
    done.set()
    sampler.join()
    cpu = _cpu_seconds(workers) - cpu_before
    size_d2, secs_d2 = _stream(rig.direct, rig.orthanc + url, headers=rig.auth)
    direct_mbps = (size_d + size_d2) / (secs_d + secs_d2) / 2**20
    gw_mbps = size_g / secs_g / 2**20
    return {"bytes": size_g, "direct_mb_s": round(direct_mbps, 1), "gateway_mb_s": round(gw_mbps, 1),
            "ratio": round(gw_mbps / direct_mbps, 3), "bridge_workers_rss_growth_mb": round(peak[0] - before, 1),
            "bridge_workers_cpu_seconds": round(cpu, 2),
            "target": ">= 0.8 of direct, < 50 MB resident growth"}


# ------------------------------------------------------------------ main

PLUGIN_MEASUREMENTS = ("scoped_find", "wado_retrieve_memory")
GATEWAY_MEASUREMENTS = ("small_json_get", "archive_stream")
ALL = PLUGIN_MEASUREMENTS + GATEWAY_MEASUREMENTS


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_plugin(selected: list[str], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The measurements on a private Orthanc with the plugin and a bridge double."""
    ctx = StackContext(ca_file=ensure_ca())
    bridge = BridgeDouble("gateway-bench-bridge").start()
    svc = OrthancService("orthanc-gateway-bench", with_filter=True, aet="GWBENCH")
    plain = OrthancService("orthanc-gateway-plain", with_filter=False, aet="GWPLAIN")
    started = False
    plain_started = False
    try:
        svc.prepare(ctx)
        settings = bridge.plugin_settings(ctx.ca_file, svc.dir / "audit-spool", svc.dir / "server.log",
                                          audit_url=None, audit_flush_seconds=1.0, revocation_refresh_seconds=10.0,
                                          reload_check_seconds=2.0, jwks_min_refresh_seconds=30.0)
        svc.plugin_config_file.write_text(json.dumps(settings))
        svc.start(ctx)
        started = True
        port = int(svc.wait_ready(ctx)["url"].rsplit(":", 1)[1])
        client = Client(port)
        probe = _token(bridge, [_grant(["settings"])])
        deadline = time.monotonic() + 30
        while client.call("GET", "/system", probe)[0] != 200:  # the plugin loads its configuration first
            if time.monotonic() > deadline:
                raise SystemExit("the plugin never accepted a token")
            time.sleep(0.3)
        if "scoped_find" in selected:
            results["scoped_find"] = scoped_find(client, bridge, svc, args.studies, args.rounds)
        if "wado_retrieve_memory" in selected:
            results["wado_retrieve_memory"] = wado_retrieve_memory(client, bridge)
            plain.prepare(ctx)
            plain.start(ctx)
            plain_started = True
            plain_port = int(plain.wait_ready(ctx)["url"].rsplit(":", 1)[1])
            results["wado_retrieve_memory_without_plugin"] = wado_retrieve_memory(
                Client(plain_port), bridge, service=plain.name, path="/dicom-web/studies/")
    finally:
        if started:
            svc.stop()
        if plain_started:
            plain.stop()
        bridge.stop()


def run_gateway(selected: list[str], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The gateway measurements on the dev stack (started here, and stopped, if it was not running)."""
    from pacs_devstack import stack

    owner = "bench-gateway"
    if not all(stack.service(name).running() for name in GATEWAY_SERVICES):
        stack.up(GATEWAY_SERVICES, owner=owner, log=lambda line: print(line, file=sys.stderr))
    try:
        # the archive study only when it is measured (a 1 MB study serves the small GETs)
        rig = GatewayRig(args.archive_mb if "archive_stream" in selected else 1)
        try:
            if "small_json_get" in selected:
                results["small_json_get"] = small_json_get(rig, args.n)
            if "archive_stream" in selected:
                results["archive_stream"] = {"archive_mb": args.archive_mb, **archive_stream(rig)}
        finally:
            rig.close()
    finally:
        stack.down(GATEWAY_SERVICES, owner=owner, log=lambda line: print(line, file=sys.stderr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], choices=ALL, help="run only this measurement")
    parser.add_argument("--skip", action="append", default=[], choices=ALL, help="leave this measurement out")
    parser.add_argument("--studies", type=int, default=5000, help="scoped_find: studies in the archive")
    parser.add_argument("--rounds", type=int, default=15, help="scoped_find: interleaved rounds")
    parser.add_argument("--n", type=int, default=300, help="small_json_get: interleaved requests")
    parser.add_argument("--archive-mb", type=int, default=200, help="archive_stream: size of the study")
    args = parser.parse_args()
    selected = [m for m in (args.only or ALL) if m not in args.skip]
    os.environ.setdefault("PACS_BRIDGE_DEVSTACK_DIR", "/tmp/ds-gateway-bench")
    results: dict[str, Any] = {"load_average_before": _load()}
    if any(m in selected for m in PLUGIN_MEASUREMENTS):
        run_plugin(selected, args, results)
    if any(m in selected for m in GATEWAY_MEASUREMENTS):
        run_gateway(selected, args, results)
    results["load_average"] = _load()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
