"""The stack handle of the gateway's browser tests (see conftest.py for the fixtures)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config import Settings
from bridge.http import pinned_session
from bridge.services import Services
from bridge.tokens.claims import Subject
from pacs_devstack import tls
from pacs_devstack.pacs_double import dicom_instance

UID_ROOT = "1.2.826.0.1.3680043.10.1137.77"
#: gateway URL -> the private bridge's Flask app (tests read its session store)
APPS: dict[str, Any] = {}


@dataclass
class Stack:
    info: dict[str, Any]
    settings: Settings
    services: Services
    directory_ids: dict[str, str]

    @property
    def gateway(self) -> str:
        return self.info["bridge"]["url"] + self.settings.gateway.prefix

    @property
    def orthanc(self) -> str:
        return str(self.info["orthanc"]["url"])

    def certs(self) -> list[Path]:
        return [tls.issue(n).cert for n in ("keycloak", "bridge", "haproxy", "bridge-gateway-test")]

    def pacs_token(self, username: str) -> str:
        """A PACS token for ``username`` from the stack's token service (its grant read now)."""
        svc = self.services.token_service
        subject = Subject(id=self.directory_ids[username], username=username, auth_time=int(time.time()),
                          acr="mfa", amr=("pwd", "otp"))
        return svc.issue(subject, svc.grant_for(subject), "gateway-integration-test").access_token

    def upload(self, patient_name: str, department: str = "Radiology") -> dict[str, str]:
        """One study in Orthanc (through its REST API, as tech.tom); returns its UIDs and ids."""
        n = uuid.uuid4().int % 10**12
        study, series, sop = f"{UID_ROOT}.{n}.1", f"{UID_ROOT}.{n}.2", f"{UID_ROOT}.{n}.3"
        data = dicom_instance(patient_id=f"GW-{n}", patient_name=patient_name, study_uid=study, series_uid=series,
                              sop_uid=sop, department=department)
        http = pinned_session(self.info["ca"]["file"])
        r = http.post(self.orthanc + "/instances", data=data, timeout=30,
                      headers={"Authorization": f"Bearer {self.pacs_token('tech.tom')}",
                               "Content-Type": "application/dicom"})
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return {"study_uid": study, "patient_id": f"GW-{n}", "study_id": r.json()["ParentStudy"],
                "patient_name": patient_name}
