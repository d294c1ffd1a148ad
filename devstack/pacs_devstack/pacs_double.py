"""What the PACS tests and the PACS benchmark need around a real Orthanc: a bridge stand-in and data.

* :class:`BridgeDouble`: the three bridge endpoints the Orthanc plugin talks to (``/jwks.json``,
  ``/revocations``, ``/audit/events``) over TLS with a certificate of the dev stack's CA, so the
  plugin runs its production code path (HTTPS fetch verified against the CA file).  Keys come
  from the token engineer's :class:`bridge.tokens.keys.KeyRing`, claims from
  :func:`bridge.tokens.claims.build`: the tokens are exactly what the bridge would issue.
* :func:`dicom_instance`: a small, valid DICOM instance (pydicom) with the attributes the scope
  check reads (InstitutionalDepartmentName, InstitutionName).
"""

from __future__ import annotations

import io
import json
import ssl
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bridge.core import grants as core_grants
from bridge.core.permissions import Permission
from bridge.tokens import claims as claims_mod
from bridge.tokens.keys import KeyEncryptor, KeyRing, MemoryKeyRepository
from pacs_devstack.state import free_port
from pacs_devstack.tls import issue

AUDIENCE = "pacs"
AUDIT_SECRET = "audit-ingest-test-secret"


class BridgeDouble:
    """A TLS server on 127.0.0.1 playing the bridge for the plugin; start() / stop()."""

    def __init__(self, name: str = "pacs-bridge-double", algorithm: str = "ES256"):
        self.ring = KeyRing(MemoryKeyRepository(), KeyEncryptor(b"\x00" * 32), algorithm=algorithm,
                            max_token_lifetime=3600, refresh_seconds=0)
        self.revoked: dict[str, int] = {}
        self.audit_events: list[dict[str, Any]] = []
        self.audit_down = False
        self.jwks_fetches = 0
        self.name = name
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()

    # ---- server

    def start(self) -> BridgeDouble:
        pair = issue(self.name)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/jwks.json":
                    with double.lock:
                        double.jwks_fetches += 1
                    self._answer(200, double.ring.jwks())
                elif self.path == "/revocations":
                    with double.lock:
                        revoked = [{"jti": j, "exp": e} for j, e in double.revoked.items()]
                    self._answer(200, {"issuer": double.url, "revoked": revoked})
                else:
                    self._answer(404, {})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/audit/events":
                    self._answer(404, {})
                elif double.audit_down:
                    self._answer(503, {})
                elif self.headers.get("Authorization") != "Bearer " + AUDIT_SECRET:
                    self._answer(401, {})
                else:
                    with double.lock:
                        double.audit_events.extend(json.loads(body)["events"])
                    self._answer(202, {})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        self.ring.active()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---- tokens

    def claims(
        self,
        permissions: Iterable[Permission | str] = (),
        *,
        roles: Iterable[str] = (),
        departments: Iterable[str] = (),
        institutions: Iterable[str] = (),
        grants: Iterable[tuple[str, Iterable[Permission | str], dict[str, list[str]]]] | None = None,
        lifetime: int = 300,
        amr: tuple[str, ...] = ("pwd", "otp"),
        acr: str | None = None,
        subject: str = "u-test",
        username: str = "test.user",
    ) -> dict[str, Any]:
        """Claims as the token service builds them (claims.build), for a user that logged in now.

        ``grants``: one ``(role, permissions, scope)`` per role held (each its own grant, as the token
        service issues them).  Without it: one grant of ``permissions`` in the scope ``departments`` /
        ``institutions`` for the first of ``roles`` (or ``test-role``)."""
        settings = claims_mod.TokenSettings(issuer=self.url, audience=AUDIENCE, lifetime_seconds=lifetime,
                                            max_lifetime_seconds=3600)
        now = int(time.time())
        subj = claims_mod.Subject(id=subject, username=username, auth_time=now - 5, acr=acr, amr=amr)
        if grants is None:
            role = next(iter(roles), "test-role")
            scope = {"departments": list(departments), "institutions": list(institutions)}
            grants = [(role, permissions, scope)]
        # as given, not expanded (a test may want download without view)
        items = tuple(core_grants.grant_from_claim({
            "kind": "role", "role": role, "permissions": sorted(Permission(p).value for p in perms),
            "scope": {k: v for k, v in scope.items() if v}}) for role, perms, scope in grants)
        grant = claims_mod.Grant(tuple(roles) or tuple(g.role for g in items if g and g.role),
                                 tuple(g for g in items if g is not None))
        return claims_mod.build(settings, subj, grant, "pacs-viewer", requested_lifetime=lifetime, now=now)

    def token(self, permissions: Iterable[Permission | str] = (), **kwargs: Any) -> str:
        return self.ring.sign(self.claims(permissions, **kwargs))

    def revoke(self, claims: dict[str, Any]) -> None:
        with self.lock:
            self.revoked[str(claims["jti"])] = int(claims["exp"])

    def plugin_settings(self, ca_file: Path, spool_dir: Path, log_file: Path | None, **extra: Any) -> dict[str, Any]:
        """A plugin config pointing at this double (short timers so tests run in seconds)."""
        from bridge.deploy.orthanc_config import plugin_settings

        cfg = plugin_settings(issuer=self.url, audience=AUDIENCE, ca_file=ca_file, spool_dir=spool_dir,
                              orthanc_log_file=log_file, pacs_name="orthanc-test",
                              audit_url=self.url + "/audit/events")
        cfg.update({"leeway_seconds": 1, "revocation_refresh_seconds": 0.5, "jwks_min_refresh_seconds": 3,
                    "audit_flush_seconds": 0.3, "reload_check_seconds": 0.5})
        cfg.update(extra)
        return cfg


def dicom_instance(
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str = "CT",
    department: str = "Radiology",
    institution: str = "Hospital Test",
    accession: str = "",
) -> bytes:
    """A tiny valid DICOM Part 10 file (8x8 16-bit image) with the given identity and scope tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.InstitutionName = institution
    ds.InstitutionalDepartmentName = department
    ds.StudyDescription = f"{modality} {department}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(128))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
