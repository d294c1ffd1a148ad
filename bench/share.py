"""Benchmark of study sharing (issue 14); prints one JSON document.

A generated 500-instance study (0.5 MB each: a 512 x 512 16-bit image under a header with the
identifying content the profile must handle: nested sequences, private attributes, dates, names in
free text), all in memory:

* ``unmodified``: parse and serialise each instance with pydicom (what serving a study costs when
  the bridge only passes the files through its DICOM layer);
* ``deidentify``: the same, de-identified for one share (bridge/sharing/deidentify.py), with the
  Basic Profile alone and with every option a share may select.

``ratio_to_unmodified`` = de-identified rate / unmodified rate by wall time, ``cpu_ratio_to_unmodified``
the same by process CPU time, steadier when other jobs share the cores (issue 14's target: at least one half, measured
end to end through the share endpoint). The endpoint phase ("serve": de-identify and serve through
the share endpoint, beside serving the same study unmodified) is to be added to ``PHASES`` when the
share endpoints land; the phases here are the in-memory half.

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


#: phase name -> builder(study) -> per-instance function. The share endpoint phase joins here.
PHASES: dict[str, Callable[[list[bytes]], Callable[[bytes], bytes]]] = {
    "unmodified": unmodified,
    "deidentify_basic": deidentify(frozenset()),
    "deidentify_all_options": deidentify(frozenset(DeidOption) - {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES}),
}


def run(study: list[bytes], build: Callable[[list[bytes]], Callable[[bytes], bytes]]) -> dict[str, Any]:
    fn = build(study)
    t0, c0 = time.perf_counter(), time.process_time()
    size = sum(len(fn(data)) for data in study)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": round(seconds, 3), "instances_per_s": round(len(study) / seconds, 1),
            "mb_per_s": round(size / seconds / 1e6, 1), "cpu_seconds": round(cpu, 3),
            "instances_per_cpu_s": round(len(study) / cpu, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    study = make_study(args.instances)
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
    base = result["unmodified"]
    for name in PHASES:
        if name != "unmodified":
            ours = result[name]
            ours["ratio_to_unmodified"] = round(ours["median_instances_per_s"] / base["median_instances_per_s"], 2)
            # CPU time is steadier than wall time on a shared machine
            ours["cpu_ratio_to_unmodified"] = round(
                ours["median_instances_per_cpu_s"] / base["median_instances_per_cpu_s"], 2)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
