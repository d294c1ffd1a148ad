"""Benchmarks of the browser path to the PACS (issue 11), one function per measurement.

    PACS_BRIDGE_DEVSTACK_DIR=/tmp/ds-gateway-bench .venv/bin/python bench/gateway.py [--studies 5000]

``main`` starts what the measurements share (a dev-stack Orthanc with the bridge plugin, pointed at a TLS
bridge double: the production code path), runs each measurement function, and prints ONE JSON object
with a key per measurement and the load average; it stops what it started.  Further measurements (the
gateway's added latency, streamed archives) are added as functions of their own and called from ``main``.

* :func:`scoped_find`: ``POST /tools/find`` over N studies (default 5,000, 5 % of them in the token's
  department) with a department-scoped token vs an unrestricted token (the core's query, passed
  through), for the whole list and for a page of 50 (also for a department holding 13 % of the
  studies); with a warm scope cache, and cold (a fresh plugin configuration starts with an empty
  cache).  Target (issue 11): warm scoped <= 2x unscoped.
* :func:`wado_retrieve_memory`: a WADO-RS retrieve of a large study through the public ``/dicom-web/``
  (served by the plugin in front of the DICOMweb plugin's internal root): Orthanc's resident memory
  before, its peak during (VmHWM), and the answer's size.
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
from pacs_devstack.orthanc import OrthancService
from pacs_devstack.pacs_double import BridgeDouble, dicom_instance
from pacs_devstack.service import StackContext
from pacs_devstack.tls import ensure_ca

UID_ROOT = "1.2.826.0.1.3680043.10.1137.4242"
SCOPE = "Bench-Cardio"


# ------------------------------------------------------------------ shared plumbing


class Client:
    """Keep-alive HTTP to one Orthanc, with a bearer token."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call(self, method: str, path: str, token: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        h = {"Authorization": f"Bearer {token}", **(headers or {})}
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
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
                cold_rounds: int = 3) -> dict[str, Any]:
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

    for label, (body, scoped) in cases.items():
        cold: list[float] = []
        for _ in range(cold_rounds):  # a rewritten plugin configuration: a new gate, an empty scope cache
            svc.plugin_config_file.write_text(svc.plugin_config_file.read_text())
            os.utime(svc.plugin_config_file, None)
            time.sleep(2.5)  # > reload_check_seconds
            client.call("GET", "/system", _token(bridge, [_grant(["settings"])]))  # let the reload happen
            cold.append(timed(scoped, body)[0])
        samples: dict[str, list[float]] = {"scoped_warm": [], "unscoped": []}
        counts = {}
        for r in range(rounds):  # interleaved: the machine's load changes within seconds
            for name, token in ((("scoped_warm", scoped), ("unscoped", unscoped)) if r % 2 == 0
                                else (("unscoped", unscoped), ("scoped_warm", scoped))):
                elapsed, count = timed(token, body)
                samples[name].append(elapsed)
                counts[name] = count
        row = {name: {**_stats(values), "results": counts[name]} for name, values in samples.items()}
        row["scoped_cold"] = _stats(cold)
        row["warm_ratio_scoped_over_unscoped"] = round(row["scoped_warm"]["median_ms"]
                                                       / row["unscoped"]["median_ms"], 2)
        out[label] = row
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


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip", action="append", default=[], help="a measurement to leave out")
    args = parser.parse_args()
    os.environ.setdefault("PACS_BRIDGE_DEVSTACK_DIR", "/tmp/ds-gateway-bench")
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
        results: dict[str, Any] = {}
        if "scoped_find" not in args.skip:
            results["scoped_find"] = scoped_find(client, bridge, svc, args.studies, args.rounds)
        if "wado_retrieve_memory" not in args.skip:
            results["wado_retrieve_memory"] = wado_retrieve_memory(client, bridge)
            plain.prepare(ctx)
            plain.start(ctx)
            plain_started = True
            plain_port = int(plain.wait_ready(ctx)["url"].rsplit(":", 1)[1])
            results["wado_retrieve_memory_without_plugin"] = wado_retrieve_memory(
                Client(plain_port), bridge, service=plain.name, path="/dicom-web/studies/")
        results["load_average"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(results, indent=2))
    finally:
        if started:
            svc.stop()
        if plain_started:
            plain.stop()
        bridge.stop()


if __name__ == "__main__":
    main()
