"""Benchmark of study sharing (issue 14); prints one JSON document.

A generated 500-instance study (0.5 MB each: a 512 x 512 16-bit image under a header with the
identifying content the profile must handle: nested sequences, private attributes, dates, names in
free text), all in memory:

* ``unmodified``: parse and serialise each instance with pydicom (what serving a study costs when
  the bridge only passes the files through its DICOM layer);
* ``deidentify``: the same, de-identified for one share (bridge/sharing/deidentify.py), with the
  Basic Profile alone and with every option a share may select.

* ``serve_unmodified`` / ``serve_deidentified``: end to end through the share endpoint
  (``GET /share/s/study.zip`` of the bridge's Flask app after link + passcode, with the share's
  session cookie): the streamed ZIP of the 500 instances, as they are (the same endpoint code with
  de-identification switched off) and de-identified for the share, by two worker processes
  (``sharing.deidentify_workers``, the default) and in the request's thread (``_inline``). By default
  the study is read from a real Orthanc (the dev stack's ``orthanc-plain``, Debian's 1.10.1 without
  the bridge plugin, started here) over HTTP, as the endpoint reads it in production; with
  ``--memory`` from an in-memory stand-in (then the baseline is a bare copy and the ratio shows the
  de-identifier's cost alone).

``ratio_to_unmodified`` = de-identified rate / unmodified rate by wall time, ``cpu_ratio_to_unmodified``
the same by process CPU time, steadier when other jobs share the cores (issue 14's target, for the
``serve_*`` pair: at least one half).

    .venv/bin/python bench/share.py [--instances 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bridge.policy.sharing import DeidOption, DeidProfile, PrivateTag
from bridge.sharing.deidentify import Deidentifier

SIDE = 512  # 512 x 512 x 2 bytes = 0.5 MiB of pixel data per instance


def _item(**values: str) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def make_study(n: int) -> list[bytes]:
    """`n` CT instances of one study, as Part 10 bytes."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = bytes(range(256)) * (SIDE * SIDE * 2 // 256)
    out = []
    for i in range(1, n + 1):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.BurnedInAnnotation = "NO"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^John", "MRN-4711", "19610412", "M"
        ds.PatientAge, ds.PatientWeight = "063Y", "81.5"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
        ds.StudyTime, ds.ContentTime, ds.AcquisitionDateTime = "101500", "101732", "20240315101600"
        ds.AccessionNumber, ds.StudyID = "ACC-998877", "S-42"
        ds.InstitutionName, ds.ReferringPhysicianName, ds.OperatorsName = "St Aldhelm", "House^Gregory", "Tech^Tom"
        ds.StationName, ds.DeviceSerialNumber, ds.Manufacturer = "CT-ROOM-3", "SN-55501", "ACME"
        ds.StudyDescription, ds.SeriesDescription = "CT chest for John Doe", "Axial 1mm"
        ds.ImageComments = "John Doe, see Dr House"
        ds.InstanceNumber, ds.SeriesNumber = i, 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, i], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], "1.0"
        ds.RequestAttributesSequence = Sequence([_item(RequestedProcedureID="RP-77", ScheduledProcedureStepID="S1",
                                                       RequestedProcedureDescription="CT chest John Doe")])
        ds.OtherPatientIDsSequence = Sequence([_item(PatientID="OTHER-1", IssuerOfPatientID="X")])
        ds.ReferencedImageSequence = Sequence([_item(ReferencedSOPClassUID=ds.SOPClassUID,
                                                     ReferencedSOPInstanceUID=generate_uid())])
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x08, "CS", "IMAGE NUM 4")
        ds.private_block(0x0009, "GEMS_IDEN_01", create=True).add_new(0x01, "LO", "John Doe")
        ds.Rows = ds.Columns = SIDE
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def unmodified(study: list[bytes]) -> Callable[[bytes], bytes]:
    def one(data: bytes) -> bytes:
        ds = dcmread(io.BytesIO(data))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    return one


def deidentify(options: frozenset[DeidOption]) -> Callable[[list[bytes]], Callable[[bytes], bytes]]:
    def build(study: list[bytes]) -> Callable[[bytes], bytes]:
        keep = (PrivateTag(0x0029, "SIEMENS CSA HEADER", 0x08),)
        return Deidentifier(DeidProfile(options, keep), os.urandom(32)).instance  # one share per run

    return build


class _Source:
    """Orthanc's three answers the share endpoint needs, from memory (every call allowed)."""

    def __init__(self, study: list[bytes]):
        ds = dcmread(io.BytesIO(study[0]), stop_before_pixels=True)
        self.uid = str(ds.StudyInstanceUID)
        self.files = {f"i{n}": data for n, data in enumerate(study)}

    def study(self, token: str, study_uid: str) -> Any:
        from bridge.core.grants import StudyInfo

        return StudyInfo("bench-study", self.uid, "MRN-4711", "Radiology", "St Aldhelm") if study_uid == self.uid \
            else None

    def instances(self, token: str, orthanc_study: str) -> list[dict[str, Any]]:
        return [{"ID": k, "ParentSeries": "s", "MainDicomTags": {"InstanceNumber": str(n)}}
                for n, k in enumerate(self.files, start=1)]

    def file(self, token: str, instance: str) -> bytes:
        return self.files[instance]


#: the study source of the ``serve_*`` phases: set by main() (an Orthanc URL, or None: memory)
ORTHANC: dict[str, Any] = {"url": None, "uid": None}


def start_orthanc(study: list[bytes]) -> tuple[Any, str]:
    """``orthanc-plain`` (no plugin) under the dev stack's state dir, holding ``study``; (service, URL)."""
    from concurrent.futures import ThreadPoolExecutor

    from pacs_devstack.orthanc import OrthancService
    from pacs_devstack.service import StackContext
    from pacs_devstack.tls import ensure_ca

    os.environ.setdefault("PACS_BRIDGE_DEVSTACK_DIR", "/tmp/ds-share-bench")
    ctx = StackContext(ca_file=ensure_ca())
    svc = OrthancService("orthanc-share-bench", with_filter=False, aet="SHAREBENCH")
    svc.prepare(ctx)
    svc.start(ctx)
    url = svc.wait_ready(ctx)["url"]
    from bridge.http import pinned_session

    http = pinned_session(ensure_ca())  # Orthanc serves HTTPS only, with the stack CA's certificate

    def put(data: bytes) -> None:
        r = http.post(url + "/instances", data=data, headers={"Content-Type": "application/dicom"}, timeout=60)
        r.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, study))
    return svc, url


def endpoint(deidentified: bool, workers: int = 2) -> Callable[[list[bytes]], Callable[[], int]]:
    """A bridge app with one external share of the study; returns a function that downloads the ZIP
    through ``GET /share/s/study.zip`` and gives its size."""

    def build(study: list[bytes]) -> Callable[[], int]:
        import tempfile
        from pathlib import Path

        from bridge.audit.keys import CheckpointKey
        from bridge.audit.store import AuditStore
        from bridge.config import load_config
        from bridge.core import grants as grants_mod
        from bridge.core import mfa
        from bridge.policy.loader import load_policy
        from bridge.sharing.service import Sharer, ShareService
        from bridge.sharing.store import ShareStore
        from bridge.store import db
        from bridge.tokens.claims import TokenSettings
        from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
        from bridge.tokens.service import TokenService
        from bridge.tokens.store import SqlAssignmentSource, SqlRevocationStore
        from bridge.web.app import create_app

        class Service(ShareService):
            def export(self, rec: Any, claims: Any, address: Any, deidentify: bool = True) -> Any:
                return super().export(rec, claims, address, deidentify=deidentified)

        url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-share-')}/bridge.db"
        db.migrate(url)
        eng = db.engine(url)
        ring = KeyRing(MemoryKeyRepository(), KeyEncryptor.from_secret(KeyEncryptor.generate_secret()))
        from bridge.sharing.service import OrthancSource

        source: Any = _Source(study)
        if ORTHANC["url"]:
            uid = source.uid
            from pacs_devstack.tls import ensure_ca

            source = OrthancSource(ORTHANC["url"], str(ensure_ca()))
            source.uid = uid
        audit = AuditStore(eng, CheckpointKey.generate())
        tokens = TokenService(ring=ring, settings=TokenSettings("https://127.0.0.1:9443", "pacs"),
                              mfa_rule=mfa.MfaRule(), keycloak=None, assignments=SqlAssignmentSource(eng),
                              revocations=SqlRevocationStore(eng), role_permissions={})
        policy = load_policy(Path(__file__).resolve().parents[1] / "examples" / "policy.yaml").sharing
        service = Service(store=ShareStore(eng), policy=policy, ring=ring, source=source,
                          issuer="https://127.0.0.1:9443", pacs_audience="pacs",
                          share_audience="https://127.0.0.1:9443/share", link_base="https://127.0.0.1:9443/share",
                          append=audit.append, deidentify_workers=workers)
        sharer = Sharer("bench-sharer", "rad.bench", "https://127.0.0.1:9443", ("radiologist",),
                        (grants_mod.Grant(frozenset({"view", "download", "share"})),), "unused")
        share = service.create(sharer, {
            "study_uid": source.uid, "purpose": "HRESCH",
            "legal_basis": "GDPR Art. 6(1)(e) + Art. 9(2)(j): scientific research with safeguards (Art. 89)",
            "lifetime": "1h", "max_uses": 5, "permissions": ["view", "download"],
            "recipient": {"type": "external", "name": "Bench", "institution": "Lab",
                          "email": "b@imaging-research.example", "country": "DE"}})
        app = create_app(load_config(store={"url": url}), share_service=service, token_service=tokens,
                         audit_store=audit, config={"PACS_BRIDGE_RATE_LOGIN": "1000/second"})
        client = app.test_client()
        r = client.post(share["link"].removeprefix("https://127.0.0.1:9443"), data={"passcode": share["passcode"]})
        assert r.status_code == 303, r.status_code

        def download() -> int:
            resp = client.get("/share/s/study.zip", buffered=False)
            assert resp.status_code == 200, resp.status_code
            size = sum(len(chunk) for chunk in resp.response)
            resp.close()
            return size

        download()  # warm-up, untimed: the worker processes start, Orthanc's cache fills alike for all phases
        return download

    return build


#: phase name -> builder(study) -> per-instance function, or (``serve_*``) a whole-study download
PHASES: dict[str, Callable[[list[bytes]], Any]] = {
    "unmodified": unmodified,
    "deidentify_basic": deidentify(frozenset()),
    "deidentify_all_options": deidentify(frozenset(DeidOption) - {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES}),
    "serve_unmodified": endpoint(False),
    "serve_deidentified": endpoint(True),  # sharing.deidentify_workers: 2 (the default)
    "serve_deidentified_inline": endpoint(True, workers=0),  # in the request's thread
}
#: which phase each ratio is taken against
BASELINE = {"deidentify_basic": "unmodified", "deidentify_all_options": "unmodified",
            "serve_deidentified": "serve_unmodified", "serve_deidentified_inline": "serve_unmodified"}


def run(study: list[bytes], build: Callable[[list[bytes]], Any]) -> dict[str, Any]:
    fn = build(study)
    whole = fn.__name__ == "download"
    t0, c0 = time.perf_counter(), time.process_time()
    size = fn() if whole else sum(len(fn(data)) for data in study)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": round(seconds, 3), "instances_per_s": round(len(study) / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 1), "cpu_seconds": round(cpu, 3),
            "instances_per_cpu_s": round(len(study) / cpu, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="serve from memory instead of a real Orthanc")
    args = ap.parse_args()
    study = make_study(args.instances)
    orthanc = None
    if not args.memory:
        orthanc, ORTHANC["url"] = start_orthanc(study)
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PHASES}
    for _ in range(args.repeat):  # interleaved, so a burst of load hits every phase alike
        for name, build in PHASES.items():
            runs[name].append(run(study, build))
    result: dict[str, Any] = {
        "study": {"instances": len(study), "mb_per_instance": round(statistics.mean(map(len, study)) / 2**20, 3)},
        "load_average_before": [round(x, 2) for x in load_before],
        "cpu_count": os.cpu_count(),
    }
    for name, rs in runs.items():
        best = max(rs, key=lambda r: r["instances_per_s"])
        result[name] = {**best, "median_instances_per_s": statistics.median(r["instances_per_s"] for r in rs),
                        "median_instances_per_cpu_s": statistics.median(r["instances_per_cpu_s"] for r in rs),
                        "runs": len(rs)}
    for name, against in BASELINE.items():
        base, ours = result[against], result[name]
        ours["ratio_to_unmodified"] = round(ours["median_instances_per_s"] / base["median_instances_per_s"], 2)
        # CPU time is steadier than wall time on a shared machine
        ours["cpu_ratio_to_unmodified"] = round(
            ours["median_instances_per_cpu_s"] / base["median_instances_per_cpu_s"], 2)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["serve_source"] = "orthanc-1.10.1 over HTTP (no plugin)" if orthanc is not None else "memory"
    if orthanc is not None:
        from pacs_devstack import process

        process.stop(orthanc.name)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
