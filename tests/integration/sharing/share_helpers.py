"""The stack handle of the sharing tests (conftest.py builds it): the stack's bridge (granian, the
example policy with its ``sharing:`` section), its Orthanc with the bridge plugin, Keycloak logins
with password + TOTP of the demo directory (Samba AD realm), the token exchange at the stack's
bridge, and the gateway."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from bridge.config import Settings
from bridge.http import pinned_session
from bridge.services import Services
from bridge.tokens.claims import Subject
from pacs_devstack import demo_data
from pacs_devstack.kc_login import client_for, fresh_totp
from pacs_devstack.pacs_double import dicom_instance
from pacs_devstack.realm import AD_REALM

UID_ROOT = "1.2.826.0.1.3680043.10.1137.88"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class ShareStack:
    info: dict[str, Any]
    settings: Settings
    services: Services
    directory_ids: dict[str, str]

    @property
    def bridge(self) -> str:
        return str(self.info["bridge"]["url"])

    @property
    def orthanc(self) -> str:
        return str(self.info["orthanc"]["url"])

    @property
    def gateway(self) -> str:
        return self.bridge + self.settings.gateway.prefix

    def http(self) -> requests.Session:
        return pinned_session(self.info["ca"]["file"])

    def login_token(self, username: str) -> str:
        """A PACS token for ``username`` the way a viewer gets one: Keycloak's browser flow with
        password + TOTP, then the RFC 8693 exchange at the stack's bridge (its grant read now)."""
        user = demo_data.user(username)
        login = client_for(self.info, AD_REALM, "pacs-viewer").login(
            username, str(user["password"]), otp=fresh_totp(user["totp_secret"], f"{AD_REALM}/{username}"))
        r = self.http().post(self.bridge + "/token", timeout=30, data={
            "grant_type": EXCHANGE, "client_id": "pacs-viewer", "subject_token": login.access_token,
            "subject_token_type": ACCESS})
        assert r.status_code == 200, r.text[:300]
        return str(r.json()["access_token"])

    def minted(self, username: str) -> str:
        """A PACS token from the stack's own token service (for the uploader only)."""
        svc = self.services.token_service
        subject = Subject(id=self.directory_ids[username], username=username, auth_time=int(time.time()),
                          acr="mfa", amr=("pwd", "otp"))
        return svc.issue(subject, svc.grant_for(subject), "sharing-integration-test").access_token

    def upload(self, patient_name: str, department: str = "Radiology", instances: int = 2) -> dict[str, Any]:
        """One study of ``instances`` instances in Orthanc, uploaded as tech.tom."""
        n = uuid.uuid4().int % 10**12
        study, series = f"{UID_ROOT}.{n}.1", f"{UID_ROOT}.{n}.2"
        http = self.http()
        token = self.minted("tech.tom")
        sops, ids = [], []
        for i in range(1, instances + 1):
            sop = f"{UID_ROOT}.{n}.3.{i}"
            data = dicom_instance(patient_id=f"SH-{n}", patient_name=patient_name, study_uid=study,
                                  series_uid=series, sop_uid=sop, department=department, accession=f"ACC{n}")
            r = http.post(self.orthanc + "/instances", data=data, timeout=30,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/dicom"})
            assert r.status_code == 200, (r.status_code, r.text[:300])
            sops.append(sop)
            ids.append(r.json()["ParentStudy"])
        return {"study_uid": study, "series_uid": series, "sops": sops, "patient_id": f"SH-{n}",
                "patient_name": patient_name, "study_id": ids[0]}


