"""What the browser gateway adds to a request, against Orthanc directly with the same PACS token.

    PACS_BRIDGE_DEVSTACK_DIR=... .venv/bin/python bench/gateway_proxy.py [--n 300] [--archive-mb 200]

Needs the running dev stack (the bridge with its gateway, Orthanc).  A PACS token for
``rad.alice`` is issued by the stack's own token service (grant read from the store) and a gateway
session holding it is created as a login would create it, so no Keycloak round trip is measured.
Then, interleaved (one direct request, one through the gateway, so a change of load on the shared
machine hits both alike):

* a small JSON GET (``/studies/{id}``): added latency, median and p99 (ms);
* a study archive of ``--archive-mb`` MB (random pixel data, so the ZIP does not shrink it),
  streamed by both paths: throughput (MB/s) and the bridge workers' resident memory growth (MB,
  sampled every 20 ms while the gateway streams).

Targets (issue 11): median < 1.5 ms and p99 < 5 ms added; archive >= 80 % of direct throughput with
< 50 MB resident growth.  The session must finish before its token needs renewal (no refresh
token here): the run takes well under the token lifetime minus the renewal margin.  Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

UID_ROOT = "1.2.826.0.1.3680043.10.1137.99"


def _stats(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}


def _big_study(total_mb: int) -> list[bytes]:
    """Instances of ~10 MB of random 16-bit pixels, ``total_mb`` MB in all, one study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    n = uuid.uuid4().int % 10**9
    side = 2236  # 2236 x 2236 x 2 bytes = 10 MB
    out = []
    for i in range(max(1, total_mb // 10)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.{n}.3.{i}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, f"{UID_ROOT}.{n}.3.{i}"
        ds.PatientID, ds.PatientName = f"BENCH-{n}", "BENCH^GATEWAY"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}.{n}.1", f"{UID_ROOT}.{n}.2"
        ds.Modality, ds.InstitutionName, ds.InstitutionalDepartmentName = "CT", "Hospital Test", "Radiology"
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = os.urandom(side * side * 2)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _workers_rss_mb(master: int) -> float:
    """Resident memory (MB) of the bridge's gunicorn workers (children of ``master``)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != master:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def _stream(http: Any, url: str, **kw: Any) -> tuple[int, float]:
    t = time.perf_counter()
    size = 0
    with http.get(url, stream=True, timeout=600, **kw) as r:
        r.raise_for_status()
        for chunk in r.iter_content(256 * 1024):
            size += len(chunk)
    return size, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--archive-mb", type=int, default=200)
    args = ap.parse_args()
    info = state.read_stack()
    settings = load_config(info["bridge"]["config"])
    if not settings.gateway.enabled or "orthanc" not in info:
        sys.exit("bench/gateway_proxy.py: needs the dev stack's bridge with its gateway and Orthanc")
    services = Services(settings)
    svc = services.token_service
    with db_session(services.engine) as s:
        sub = s.scalar(select(RoleAssignment.subject_id).where(RoleAssignment.username == "rad.alice"))
    subject = Subject(id=str(sub), username="rad.alice", auth_time=int(time.time()), acr="mfa", amr=("pwd", "otp"))
    ca = info["ca"]["file"]
    orthanc, gateway = info["orthanc"]["url"], info["bridge"]["url"] + settings.gateway.prefix

    def token_for(subj: Subject) -> Any:
        return svc.issue(subj, svc.grant_for(subj), "gateway-bench")

    # the archive study, uploaded as a technologist would (an upload grant, read from the store)
    with db_session(services.engine) as s:
        tech = s.scalar(select(RoleAssignment.subject_id).where(RoleAssignment.role == "technologist"))
    up = token_for(Subject(id=str(tech), username="tech", auth_time=int(time.time()), acr="mfa", amr=("otp",)))
    http_direct = pinned_session(ca)
    study_id = ""
    for data in _big_study(args.archive_mb):
        r = http_direct.post(orthanc + "/instances", data=data, timeout=120,
                             headers={"Authorization": f"Bearer {up.access_token}"})
        r.raise_for_status()
        study_id = r.json()["ParentStudy"]

    issued = token_for(subject)
    store = SessionStore.under_kek(services.engine, services.key_ring.encryptor)
    raw = store.create(subject_id=subject.id, kc_sub=subject.id, sid=None, username="rad.alice",
                       tokens=Tokens(issued.access_token, None, None), token_exp=float(issued.claims["exp"]),
                       lifetime_seconds=3600)
    auth = {"Authorization": f"Bearer {issued.access_token}"}
    http_gw = pinned_session(ca)
    http_gw.cookies.set(COOKIE, raw, domain=gateway.split("/")[2].split(":")[0], path="/", secure=True)
    try:
        direct, via = [], []
        for _ in range(20):  # warm both paths (connections, caches)
            http_direct.get(f"{orthanc}/studies/{study_id}", headers=auth, timeout=10)
            http_gw.get(f"{gateway}/studies/{study_id}", timeout=10)
        for _ in range(args.n):
            t = time.perf_counter()
            assert http_direct.get(f"{orthanc}/studies/{study_id}", headers=auth, timeout=10).status_code == 200
            direct.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            assert http_gw.get(f"{gateway}/studies/{study_id}", timeout=10).status_code == 200
            via.append((time.perf_counter() - t) * 1000)
        added = [v - d for v, d in zip(via, direct, strict=True)]

        master = json.loads((Path(os.environ.get("PACS_BRIDGE_DEVSTACK_DIR", ".devstack")) / "bridge" /
                             "process.json").read_text())["pid"]
        size_d, secs_d = _stream(http_direct, f"{orthanc}/studies/{study_id}/archive", headers=auth)
        before = _workers_rss_mb(master)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _workers_rss_mb(master))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        size_g, secs_g = _stream(http_gw, f"{gateway}/studies/{study_id}/archive")
        done.set()
        sampler.join()
        size_d2, secs_d2 = _stream(http_direct, f"{orthanc}/studies/{study_id}/archive", headers=auth)
    finally:
        from bridge.web.gateway.sessions import hash_id

        store.end(hash_id(raw))
    direct_mbps = (size_d + size_d2) / (secs_d + secs_d2) / 2**20
    gw_mbps = size_g / secs_g / 2**20
    print(json.dumps({
        "small_json_get": {"direct": _stats(direct), "gateway": _stats(via), "added": _stats(added), "n": args.n,
                           "target": "added median < 1.5 ms, p99 < 5 ms"},
        "archive": {"bytes": size_g, "direct_mb_s": round(direct_mbps, 1), "gateway_mb_s": round(gw_mbps, 1),
                    "ratio": round(gw_mbps / direct_mbps, 3),
                    "bridge_workers_rss_growth_mb": round(peak[0] - before, 1),
                    "target": ">= 0.8 of direct, < 50 MB resident growth"},
        "via": gateway,
    }, indent=2))


if __name__ == "__main__":
    main()
