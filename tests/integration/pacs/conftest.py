"""Fixtures for the PACS tests: the stack's Orthanc with the bridge plugin pointed at a bridge
double (TLS, dev CA), and studies uploaded through the API with an upload-permitted token."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.core.permissions import Permission as P
from pacs_devstack.pacs_double import AUDIT_SECRET, BridgeDouble, dicom_instance

#: (patient id, name, department, modality, institution)
STUDIES = (
    ("P-001", "Doe^Jane", "Radiology", "CT", "Hospital Test"),
    ("P-002", "Roe^Richard", "Cardiology", "US", "Hospital Test"),
    ("P-003", "Poe^Edgar", "Emergency", "MR", "Hospital Test"),
    ("P-004", "Moe^Anna", "Radiology", "MR", "Clinic North"),
)
UID_ROOT = "1.2.826.0.1.3680043.10.1137"


@dataclass
class Pacs:
    url: str  # https: Orthanc serves HTTPS only, with a certificate of the stack CA (``ca``)
    ca: str
    bridge: BridgeDouble
    config_file: Path
    spool_dir: Path
    settings: dict[str, Any]
    studies: dict[str, dict[str, str]] = field(default_factory=dict)  # patient id -> ids

    def get(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        return self.request("GET", path, token, **kw)

    def request(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        kw.setdefault("verify", self.ca)
        return requests.request(method, self.url + path, headers=headers, timeout=15, **kw)

    def write_settings(self, **changes: Any) -> None:
        """Rewrite the plugin config (the plugin reloads it) and wait until it is in force."""
        self.settings.update(changes)
        self.config_file.write_text(json.dumps(self.settings, indent=2))
        time.sleep(1.2)  # > reload_check_seconds; the stat check is per request
        wait_allowed(self)


def wait_allowed(pacs: Pacs, timeout: float = 20.0) -> None:
    token = pacs.bridge.token([P.SETTINGS])
    deadline = time.monotonic() + timeout
    while True:
        status = pacs.get("/system", token).status_code
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the plugin never accepted a valid token (last status {status})")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def orthanc(stack: dict[str, Any]) -> dict[str, Any]:
    if "orthanc" not in stack or "plugin_config" not in stack["orthanc"]:
        pytest.skip("the dev stack's Orthanc (with the bridge plugin) is not part of this run")
    return dict(stack["orthanc"])


@pytest.fixture(scope="session")
def bridge_double() -> Iterator[BridgeDouble]:
    double = BridgeDouble().start()
    yield double
    double.stop()


class PluginSwap:
    """Which bridge the stack's Orthanc plugin trusts: the PACS tests (those using :func:`pacs`) point
    it at their double, every other test needs the real bridge.  Session state is kept on pytest's
    config object and an autouse fixture (tests/integration/conftest.py) calls :meth:`ensure` before
    each test, so the order of the test packages does not matter (pytest's "package" scope is the
    session for directories without ``__init__.py``)."""

    ATTR = "pacs_bridge_plugin_swap"

    def __init__(self, pacs: Pacs, original: str):
        self.pacs, self.original, self.on_double = pacs, original, True

    def ensure(self, *, double: bool) -> None:
        if double == self.on_double:
            return
        if double:
            self.pacs.config_file.write_text(json.dumps(self.pacs.settings, indent=2))
            wait_allowed(self.pacs)
        else:
            self.pacs.config_file.write_text(self.original)
            time.sleep(2.5)  # > reload_check_seconds: the plugin trusts the real bridge again
        self.on_double = double


@pytest.fixture(scope="session")
def pacs(orthanc: dict[str, Any], stack: dict[str, Any], bridge_double: BridgeDouble,
         tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Pacs]:
    config_file = Path(orthanc["plugin_config"])
    # the real bridge's settings: from a copy of this fixture set up earlier (the storage tests'),
    # which has pointed the file at its own double by now, else from the file
    earlier = getattr(request.config, PluginSwap.ATTR, None)
    original = earlier.original if earlier is not None else config_file.read_text()
    work = tmp_path_factory.mktemp("pacs")
    secret_file = work / "audit-token"
    secret_file.write_text(AUDIT_SECRET)
    secret_file.chmod(0o600)
    spool = work / "spool"
    settings = bridge_double.plugin_settings(Path(stack["ca"]["file"]), spool, Path(orthanc["log"]),
                                             audit_token_file=str(secret_file))
    storage = json.loads(original).get("storage")
    if storage:  # the encrypted image store: read at Orthanc's start, so a restart must find it again
        settings["storage"] = storage
    config_file.write_text(json.dumps(settings, indent=2))
    p = Pacs(orthanc["url"], stack["ca"]["file"], bridge_double, config_file, spool, settings)
    wait_allowed(p)
    swap = PluginSwap(p, original)
    setattr(request.config, PluginSwap.ATTR, swap)  # the storage tests' copy of this fixture replaces it
    yield p
    if getattr(request.config, PluginSwap.ATTR, None) is swap:
        delattr(request.config, PluginSwap.ATTR)
    config_file.write_text(original)


@pytest.fixture(scope="session")
def studies(pacs: Pacs) -> dict[str, dict[str, str]]:
    """Upload the demo studies with a technologist-like (upload) token; patient id -> Orthanc ids."""
    token = pacs.bridge.token([P.UPLOAD, P.VIEW], roles=["technologist"])
    for n, (pid, name, dept, modality, inst) in enumerate(STUDIES, start=1):
        study_uid = f"{UID_ROOT}.{n}"
        data = dicom_instance(patient_id=pid, patient_name=name, study_uid=study_uid,
                              series_uid=f"{study_uid}.1", sop_uid=f"{study_uid}.1.1", modality=modality,
                              department=dept, institution=inst, accession=f"ACC{n:03d}")
        resp = pacs.request("POST", "/instances", token, data=data,
                            headers={"Content-Type": "application/dicom"})
        assert resp.status_code == 200, resp.status_code
        answer = resp.json()
        pacs.studies[pid] = {"study": answer["ParentStudy"], "series": answer["ParentSeries"],
                             "instance": answer["ID"], "patient": answer["ParentPatient"],
                             "study_uid": study_uid, "department": dept, "institution": inst}
    return pacs.studies


@pytest.fixture
def audit_events(pacs: Pacs) -> Callable[..., list[dict[str, Any]]]:
    """`audit_events(type, predicate, timeout)` waits for matching events shipped by the plugin."""

    def wait(kind: str, pred: Callable[[dict[str, Any]], bool] = lambda e: True,
             timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with pacs.bridge.lock:
                found = [e for e in pacs.bridge.audit_events if e["type"] == kind and pred(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    return wait
