"""Orthanc keeps answering while studies are deleted and the plugin looks studies up at the same time.

The hazard (bridge/deploy/orthanc_rest_plugin.py): orthanc-python 4.0 holds Python's lock during
``orthanc.RestApiGet``/``Post``, and Orthanc 1.10.1 calls the encrypted storage area's ``remove`` (a
Python callback) inside a delete's database transaction.  A lookup (lock held, waiting for the
database) and a delete (database held, waiting for the lock) then wait for each other forever: it
hung Orthanc once in CI.  The plugin now calls Orthanc's REST API through a small C plugin, with
the lock released.  Here: the dev stack's Orthanc says it uses that library, and uploads + deletes
race scoped listings and look-ups (each one REST calls inside the plugin) without a single request
going unanswered.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.core.permissions import Permission as P
from pacs_devstack.pacs_double import dicom_instance

pytestmark = pytest.mark.integration

SECONDS = 8.0
_n = itertools.count(1)


def test_the_plugin_calls_orthanc_without_pythons_lock(pacs: Any, orthanc: dict[str, Any]) -> None:
    log = Path(orthanc["log"]).read_text(errors="replace")
    assert "REST calls through libPacsBridgeRest.so, without Python's lock" in log, log[-3000:]
    assert "is not loaded" not in log


def test_deletes_racing_lookups_never_hang_orthanc(pacs: Any, studies: dict[str, dict[str, str]]) -> None:
    writer = pacs.bridge.token([P.UPLOAD, P.DELETE, P.VIEW], roles=["admin"])
    scoped = pacs.bridge.token([P.VIEW], departments=["Radiology"])
    stop = time.monotonic() + SECONDS
    errors: list[str] = []
    counts = {"deleted": 0, "lookups": 0}
    victims: list[str] = []
    lock = threading.Lock()

    def call(method: str, path: str, token: str, **kw: Any) -> requests.Response | None:
        try:
            return pacs.request(method, path, token, **kw)  # 15 s timeout: a hang is an error here
        except requests.RequestException as exc:
            with lock:
                errors.append(f"{method} {path}: {type(exc).__name__}")
            return None

    def deleter() -> None:
        while time.monotonic() < stop and not errors:
            n = next(_n)
            uid = f"1.2.826.0.1.3680043.10.1137.77{int(time.time())}.{n}"
            data = dicom_instance(patient_id=f"GIL-{n}", patient_name="Race^Test", study_uid=uid,
                                  series_uid=uid + ".1", sop_uid=uid + ".1.1", department="Radiology")
            up = call("POST", "/instances", writer, data=data)
            if up is None or up.status_code != 200:
                continue
            study = up.json()["ParentStudy"]
            with lock:
                victims.append(study)
            gone = call("DELETE", f"/studies/{study}", writer)
            if gone is not None and gone.status_code == 200:
                counts["deleted"] += 1

    def looker() -> None:
        while time.monotonic() < stop and not errors:
            call("POST", "/tools/find", scoped, json={"Level": "Study", "Query": {}, "Expand": True})
            with lock:
                recent = victims[-3:]
            for study in recent:  # each a lookup the plugin makes (the study is new to its cache)
                call("GET", f"/studies/{study}", scoped)
            counts["lookups"] += 1

    threads = [threading.Thread(target=deleter), threading.Thread(target=deleter),
               threading.Thread(target=looker), threading.Thread(target=looker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a request never came back: Orthanc hangs"
    assert not errors, errors[:5]
    assert counts["deleted"] >= 5 and counts["lookups"] >= 5, counts
    assert pacs.get("/system", pacs.bridge.token([P.SETTINGS])).status_code == 200
