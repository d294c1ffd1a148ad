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
#: the departments of conftest's ``department_studies``: one inside the demo cardiologists' scope, three outside
IN_SCOPE = "Cardiology"
OUT_OF_SCOPE = ("Radiology", "Oncology", "Emergency")
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
        """One study in Orthanc (through its REST API, as tech.tom); returns its UIDs and Orthanc ids
        (``study_id``/``series``/``instance``: what Orthanc Explorer and the web viewer use)."""
        n = uuid.uuid4().int % 10**12
        study, series, sop = f"{UID_ROOT}.{n}.1", f"{UID_ROOT}.{n}.2", f"{UID_ROOT}.{n}.3"
        data = dicom_instance(patient_id=f"GW-{n}", patient_name=patient_name, study_uid=study, series_uid=series,
                              sop_uid=sop, department=department)
        http = pinned_session(self.info["ca"]["file"])
        r = http.post(self.orthanc + "/instances", data=data, timeout=30,
                      headers={"Authorization": f"Bearer {self.pacs_token('tech.tom')}",
                               "Content-Type": "application/dicom"})
        assert r.status_code == 200, (r.status_code, r.text[:300])
        answer = r.json()
        return {"study_uid": study, "series_uid": series, "sop_uid": sop, "patient_id": f"GW-{n}",
                "study_id": answer["ParentStudy"], "series": answer["ParentSeries"], "instance": answer["ID"],
                "patient": answer["ParentPatient"],
                "patient_name": patient_name, "department": department}


def log_in(b: Any, gateway: str, username: str) -> str:
    """Log ``username`` in at ``gateway`` in Chromium: Keycloak's password form, then TOTP (the demo
    directory's secrets).  Returns the gateway URL (the base every later request is under)."""
    from pacs_devstack import demo_data
    from pacs_devstack.kc_login import fresh_totp
    from pacs_devstack.realm import AD_REALM
    from tests.integration.pacs.test_web_viewer_chromium import through_gateway

    user = demo_data.user(username)
    return through_gateway(b, gateway, username, str(user["password"]),
                           fresh_totp(user["totp_secret"], f"{AD_REALM}/{username}"))


#: ``fetch`` from the page (the session cookie, Origin and Sec-Fetch-* as the browser sends them):
#: arguments method, url, JSON body or null; answers [status, body text]
FETCH = """
var done = arguments[arguments.length - 1];
var init = {method: arguments[0], credentials: 'same-origin'};
if (arguments[2] !== null) { init.body = arguments[2]; init.headers = {'Content-Type': 'application/json'}; }
fetch(arguments[1], init).then(function (r) { return r.text().then(function (t) { done([r.status, t]); }); })
  .catch(function (e) { done([0, String(e)]); });
"""


def page_fetch(b: Any, method: str, url: str, body: str | None = None) -> tuple[int, str]:
    status, text = b.execute_async(FETCH, method, url, body)
    return int(status), str(text)
