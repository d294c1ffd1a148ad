"""Studies of their own for the viewer tests: other PACS tests upload into the shared demo studies
(extra series, the same UID under another patient), so the viewer and DICOMweb-client tests store
two studies nobody else touches: ``IN`` (Radiology) and ``OUT`` (Cardiology)."""

from __future__ import annotations

import time
import zlib
from typing import Any

from bridge.core.permissions import Permission as P
from pacs_devstack.pacs_double import dicom_instance
from tests.integration.pacs.conftest import UID_ROOT
from tests.integration.pacs.scoped_tokens import scoped_token

IN, OUT = "in", "out"
DEPARTMENTS = {IN: "Radiology", OUT: "Cardiology"}
#: what dicom_instance stores as pixel data (8x8, 16-bit little-endian words 0x0100, 0x0302, ...)
PIXELS = bytes(range(128))


def store_studies(pacs: Any, tag: str) -> dict[str, dict[str, str]]:
    """Upload one single-instance study per department; ``tag`` keeps the UIDs apart per test module.
    Returns ``{IN|OUT: {study, series, instance, patient, study_uid, series_uid, sop_uid, patient_id}}``."""
    token = scoped_token(pacs.bridge, [P.UPLOAD, P.VIEW])
    stamp = f"{time.time_ns() // 1000}{zlib.crc32(tag.encode()) % 10000}"  # unique across runs and modules
    out: dict[str, dict[str, str]] = {}
    for n, (key, department) in enumerate(DEPARTMENTS.items(), start=1):
        study_uid = f"{UID_ROOT}.88.{stamp}.{n}"
        patient_id = f"V{stamp}-{key}"
        data = dicom_instance(patient_id=patient_id, patient_name=f"Viewer^{key}", study_uid=study_uid,
                              series_uid=study_uid + ".1", sop_uid=study_uid + ".1.1", modality="CT",
                              department=department, institution="Hospital Test")
        resp = pacs.request("POST", "/instances", token, data=data, headers={"Content-Type": "application/dicom"})
        assert resp.status_code == 200, resp.status_code
        answer = resp.json()
        out[key] = {"study": answer["ParentStudy"], "series": answer["ParentSeries"], "instance": answer["ID"],
                    "patient": answer["ParentPatient"], "study_uid": study_uid, "series_uid": study_uid + ".1",
                    "sop_uid": study_uid + ".1.1", "patient_id": patient_id}
    return out
