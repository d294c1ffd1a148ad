"""The break-glass tests' world: the second bridge, its webhook receiver, studies in the stack's
Orthanc, logins through Keycloak's real forms over HTTP (fixtures in conftest.py)."""

from __future__ import annotations

import html
import json
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from bridge.config import Settings
from bridge.http import pinned_session
from bridge.services import Services
from bridge.tokens.claims import Subject
from pacs_devstack import demo_data
from pacs_devstack.kc_login import _form, fresh_totp
from pacs_devstack.pacs_double import dicom_instance
from pacs_devstack.realm import AD_REALM

UID_ROOT = "1.2.826.0.1.3680043.10.1137.88"
#: a top-level navigation, as a browser sends it (the gateway sends such a request to Keycloak)
NAV = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none"}


class Receiver(BaseHTTPRequestHandler):
    """The webhook's receiver: keeps every JSON body it got."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        Receiver.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class World:
    stack: dict[str, Any]
    settings: Settings
    services: Services
    ids: dict[str, str]
    gateway: str  # https://127.0.0.1:<port>/pacs
    origin: str
    app: Any
    webhook: list[bytes] = field(default_factory=lambda: Receiver.bodies)

    @property
    def ca(self) -> str:
        return str(self.stack["ca"]["file"])

    def pacs_token(self, username: str) -> str:
        """A PACS token from the stack's token service, its grants (break-glass ones too) read now."""
        svc = self.services.token_service
        subject = Subject(id=self.ids[username], username=username, auth_time=int(time.time()),
                          acr="mfa", amr=("pwd", "otp"))
        return svc.issue(subject, svc.grant_for(subject), "break-glass-integration-test").access_token

    def upload(self, patient_id: str, department: str) -> dict[str, str]:
        n = uuid.uuid4().int % 10**12
        study, series, sop = f"{UID_ROOT}.{n}.1", f"{UID_ROOT}.{n}.2", f"{UID_ROOT}.{n}.3"
        data = dicom_instance(patient_id=patient_id, patient_name=f"BG^{patient_id}", study_uid=study,
                              series_uid=series, sop_uid=sop, department=department)
        r = pinned_session(self.ca).post(self.stack["orthanc"]["url"] + "/instances", data=data, timeout=30,
                                         headers={"Authorization": f"Bearer {self.pacs_token('tech.tom')}",
                                                  "Content-Type": "application/dicom"})
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return {"study_uid": study, "study_id": r.json()["ParentStudy"], "patient_id": patient_id}

    def browser(self) -> requests.Session:
        return pinned_session(self.ca)

    def keycloak_forms(self, http: requests.Session, res: requests.Response, username: str) -> requests.Response:
        """Answer Keycloak's forms (password, then TOTP) until it sends the browser back to the bridge;
        returns the bridge's answer to that callback."""
        user = demo_data.user(username)
        otp = fresh_totp(user["totp_secret"], f"{AD_REALM}/{username}")
        for _ in range(14):
            if res.status_code in (301, 302, 303):
                where = urljoin(res.url, res.headers["Location"])
                res = http.get(where, allow_redirects=False, headers=NAV)
                back_to_keycloak = res.status_code in (302, 303) and not urljoin(
                    res.url, res.headers["Location"]).startswith(self.origin)
                if where.startswith(self.origin) and not back_to_keycloak:
                    return res  # the bridge's answer (a step-up sends the browser back to Keycloak)
                continue
            assert res.status_code == 200, (res.status_code, res.url, res.text[:300])
            form_id, action, hidden = _form(res.text)
            if form_id == "kc-form-login":
                data = {**hidden, "username": username, "password": user["password"], "credentialId": ""}
            elif form_id == "kc-otp-login-form":
                data = {**hidden, "otp": otp()}
            else:
                raise AssertionError(f"unexpected Keycloak form {form_id}")
            res = http.post(html.unescape(action), data=data, allow_redirects=False, headers=NAV)
        raise AssertionError("the login did not come back to the bridge")

    def log_in(self, username: str) -> requests.Session:
        """A gateway session of ``username`` (password + TOTP at Keycloak), in a fresh cookie jar."""
        http = self.browser()
        res = http.get(self.gateway + "/", allow_redirects=False, headers=NAV)
        assert res.status_code == 302, res.status_code
        done = self.keycloak_forms(http, res, username)
        assert done.status_code == 303, (done.status_code, done.text[:300])
        return http

    def post(self, http: requests.Session, path: str, data: Any) -> requests.Response:
        """A form POST as the gateway's own page sends it (same origin)."""
        return http.post(self.gateway + path, data=data, allow_redirects=False,
                         headers={**NAV, "Origin": self.origin, "Sec-Fetch-Site": "same-origin"})


def received_syslog(world: World) -> list[bytes]:
    return Path(world.stack["rsyslog"]["received_file"]).read_bytes().splitlines()


def webhook_bodies() -> list[dict[str, Any]]:
    return [json.loads(b) for b in Receiver.bodies]
