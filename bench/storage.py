"""What the encrypted image store costs: store and read throughput, plain vs encrypted storage.

    PACS_BRIDGE_DEVSTACK_DIR=/tmp/ds-storage-bench .venv/bin/python bench/storage.py [--small 500] [--large-mb 200]

Starts two Orthancs of the dev stack's service class, identical but for the storage: both run the
bridge's plugin bundle (production code path, pointed at a TLS bridge double; every request
carries a token), one without a ``storage`` object, so Orthanc keeps its own file storage
(``plain``), the other with it (``encrypted``: AES-256-GCM, a data key per file, atomic rename,
fsync as ``SyncStorageArea`` asks).  Both have ``MaximumStorageCacheSize: 0``, so every read goes
to the storage.  The workload, through the REST API with one keep-alive client:
``--small`` instances of 0.5 MB (512x512 16-bit) and one series of ``--large-mb`` MB (2 MB
instances), stored (``POST /instances``) then read back (``GET /instances/{id}/file``).  The two
servers are measured in interleaved rounds (order alternating), so a change of load on the
shared machine hits both.  Reported per phase: MB/s of each, the encrypted/plain ratio, and the
Orthanc process's CPU seconds per MB (utime + stime from /proc).  Prints one JSON object.

Targets (issue 12): store >= 70 %, read >= 80 % of the plain throughput.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "devstack"))

from bridge.core.permissions import Permission as P
from pacs_devstack import process
from pacs_devstack.orthanc import OrthancService, connection
from pacs_devstack.pacs_double import BridgeDouble
from pacs_devstack.service import StackContext
from pacs_devstack.tls import ensure_ca

ROUNDS = 10
UID_ROOT = "1.2.826.0.1.3680043.10.1137.9"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _instance(n: int, side: int, series: str, patient: str) -> bytes:
    """A DICOM instance of ``side``x``side`` 16-bit pixels (0.5 MB at 512, 2 MB at 1024)."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = f"{series}.{n}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = f"{series}.{n}"
    ds.PatientID, ds.PatientName = patient, "Bench^Storage"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series.rsplit(".", 1)[0], series
    ds.Modality, ds.InstanceNumber = "CT", n
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = os.urandom(side * side * 2)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _cpu(name: str) -> float:
    rec = process.load(name)
    if rec is None:
        return 0.0
    fields = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Client:
    """One keep-alive connection; reopened when Orthanc closed it (its keep-alive timeout is short)."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.conn = connection(port, timeout=120)  # HTTPS, verified against the stack CA

    def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/dicom"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                # Orthanc closed the keep-alive connection (over TLS: an EOF on the next write)
                self.conn.close()
                self.conn = connection(self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def store(self, data: bytes) -> str:
        status, body = self._call("POST", "/instances", data)
        if status != 200:
            raise SystemExit(f"store answered {status}: {body[:200]!r}")
        return str(json.loads(body)["ID"])

    def read(self, instance: str) -> int:
        status, body = self._call("GET", f"/instances/{instance}/file")
        if status != 200 or body[128:132] != b"DICM":
            raise SystemExit(f"read answered {status}")
        return len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500, help="instances of 0.5 MB")
    parser.add_argument("--large-mb", type=int, default=200, help="size of the large series (2 MB instances)")
    args = parser.parse_args()
    os.environ.setdefault("PACS_BRIDGE_DEVSTACK_DIR", "/tmp/ds-storage-bench")
    ctx = StackContext(ca_file=ensure_ca())
    bridge = BridgeDouble("storage-bench-bridge").start()
    plain = OrthancService("orthanc-store-plain", with_filter=True, aet="STOREPLAIN")
    enc = OrthancService("orthanc-store-enc", with_filter=True, aet="STOREENC")
    servers = {"plain": plain, "encrypted": enc}
    try:
        for label, svc in servers.items():
            for sub in ("storage", "index"):  # a fresh store each run
                shutil.rmtree(svc.dir / sub, ignore_errors=True)
            svc.prepare(ctx)
            settings = bridge.plugin_settings(ctx.ca_file, svc.dir / "audit-spool", svc.dir / "server.log",
                                              audit_url=None, revocation_refresh_seconds=10.0,
                                              reload_check_seconds=2.0, jwks_min_refresh_seconds=30.0)
            if label == "encrypted":
                settings["storage"] = json.loads(svc.plugin_config_file.read_text())["storage"]
            svc.plugin_config_file.write_text(json.dumps(settings))
            conf = json.loads(svc.config_file.read_text())
            conf["MaximumStorageCacheSize"] = 0
            svc.config_file.write_text(json.dumps(conf))
            svc.start(ctx)
        token = bridge.token(list(P))
        clients = {label: Client(int(svc.wait_ready(ctx)["url"].rsplit(":", 1)[1]), token)
                   for label, svc in servers.items()}
        for client in clients.values():  # the plugin loads its configuration on the first requests
            deadline = time.monotonic() + 30
            while client._call("GET", "/system")[0] != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("the plugin never accepted the bench's token")
                time.sleep(0.3)

        small = [_instance(n, 512, f"{UID_ROOT}.1.1", "BENCH-S") for n in range(1, args.small + 1)]
        large_n = max(1, args.large_mb // 2)
        large = [_instance(n, 1024, f"{UID_ROOT}.2.1", "BENCH-L") for n in range(1, large_n + 1)]
        workloads = {"small_0.5MB": small, f"series_{args.large_mb}MB": large}
        results: dict[str, Any] = {"small_instances": len(small), "large_series_instances": len(large),
                                   "load_average_start": [round(x, 2) for x in os.getloadavg()], "phases": {}}
        ids: dict[str, dict[str, list[str]]] = {label: {w: [] for w in workloads} for label in servers}
        for phase in ("store", "read"):
            for wname, items in workloads.items():
                seconds = {label: 0.0 for label in servers}
                cpu = {label: 0.0 for label in servers}
                nbytes = sum(len(x) for x in items)
                chunk = max(1, len(items) // ROUNDS)
                for r, start in enumerate(range(0, len(items), chunk)):
                    order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                    for label in order:
                        c0, t0 = _cpu(servers[label].name), time.perf_counter()
                        if phase == "store":
                            ids[label][wname] += [clients[label].store(d) for d in items[start:start + chunk]]
                        else:
                            for i in ids[label][wname][start:start + chunk]:
                                clients[label].read(i)
                        seconds[label] += time.perf_counter() - t0
                        cpu[label] += _cpu(servers[label].name) - c0
                mb = nbytes / 1e6
                row: dict[str, Any] = {"MB": round(mb, 1)}
                for label in servers:
                    row[label] = {"MB_per_s": round(mb / seconds[label], 1), "seconds": round(seconds[label], 2),
                                  "orthanc_cpu_s_per_MB": round(cpu[label] / mb, 4)}
                row["encrypted_vs_plain"] = round(row["plain"]["seconds"] / row["encrypted"]["seconds"], 3)
                row["target"] = 0.7 if phase == "store" else 0.8
                row["meets_target"] = row["encrypted_vs_plain"] >= row["target"]
                results["phases"][f"{phase}_{wname}"] = row
        # nothing of the workload in clear on the encrypted side
        leaked = sum(1 for p in (enc.dir / "storage").rglob("*") if p.is_file() and b"DICM" in p.read_bytes()[:200])
        results["encrypted_files_with_DICM_marker"] = leaked
        results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(results, indent=2))
    finally:
        bridge.stop()
        for svc in servers.values():
            process.stop(svc.name)
            for sub in ("storage", "index"):
                shutil.rmtree(svc.dir / sub, ignore_errors=True)


if __name__ == "__main__":
    main()
