"""Issue 12 item 6 against the real Orthanc 1.10.1 + orthanc-python 4.0: every stored file is
encrypted, the studies still open through the plugin, a swapped file is a clean, audited read error,
the storage KEK rotates while Orthanc runs (and after a restart the old data still opens), and a
plaintext storage of Orthanc's own is migrated online."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.core import envelope
from bridge.core.permissions import Permission as P
from bridge.deploy import plugin_bundle
from bridge.http import pinned_session
from bridge.pacs import storage_area
from pacs_devstack import process
from pacs_devstack.orthanc import OrthancService, storage_area_script
from pacs_devstack.pacs_double import dicom_instance
from pacs_devstack.service import StackContext
from pacs_devstack.tls import ensure_ca
from tests.integration.ha.ha_helpers import restored, start, stop
from tests.integration.pacs.conftest import STUDIES, UID_ROOT

pytestmark = pytest.mark.integration
WORKTREE = Path(__file__).resolve().parents[3]


def _files(root: Path) -> dict[str, Path]:
    return {path.name: path for _, path in _attachments(root)}


def _attachments(root: Path) -> list[tuple[str, Path]]:
    from bridge.pacs.storage_maintenance import attachments

    return list(attachments(root))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{WORKTREE}:{WORKTREE / 'devstack'}")
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=WORKTREE)


def _upload(pacs: Any, n: int, pid: str) -> dict[str, str]:
    token = pacs.bridge.token([P.UPLOAD, P.VIEW], roles=["technologist"])
    uid = f"{UID_ROOT}.77{n}"
    data = dicom_instance(patient_id=pid, patient_name=f"Swap^Test{n}", study_uid=uid, series_uid=uid + ".1",
                          sop_uid=uid + ".1.1")
    resp = pacs.request("POST", "/instances", token, data=data, headers={"Content-Type": "application/dicom"})
    assert resp.status_code == 200, resp.status_code
    return resp.json()


def test_no_file_in_the_storage_holds_dicom_or_a_patient_name(pacs: Any, orthanc: dict[str, Any],
                                                              studies: dict[str, dict[str, str]]) -> None:
    files = _files(Path(orthanc["storage_dir"]))
    assert len(files) >= len(STUDIES)
    names = [name.encode() for _, name, *_ in STUDIES] + [pid.encode() for pid, *_ in STUDIES]
    for uuid, path in files.items():
        raw = path.read_bytes()
        assert envelope.is_envelope(raw), uuid
        assert b"DICM" not in raw and not any(n in raw for n in names), uuid
    token = pacs.bridge.token([P.VIEW, P.DOWNLOAD])
    for pid, name, *_ in STUDIES:
        ids = studies[pid]
        assert pacs.get(f"/studies/{ids['study']}", token).status_code == 200
        dicom = pacs.get(f"/instances/{ids['instance']}/file", token)
        assert dicom.status_code == 200 and dicom.content[128:132] == b"DICM" and name.encode() in dicom.content


def test_swapped_files_fail_cleanly_and_are_audited(pacs: Any, orthanc: dict[str, Any], studies: Any,
                                                   audit_events: Any) -> None:
    root = Path(orthanc["storage_dir"])
    before = set(_files(root))
    a = _upload(pacs, 1, "SWAP-A")
    mid = set(_files(root))
    b = _upload(pacs, 2, "SWAP-B")
    after = _files(root)

    def dicom_file(uuids: set[str]) -> Path:
        found = [after[u] for u in uuids if envelope.parse_header(after[u].read_bytes()).content_type == 1]
        assert len(found) == 1, uuids
        return found[0]

    pa, pb = dicom_file(mid - before), dicom_file(set(after) - mid)
    ra, rb = pa.read_bytes(), pb.read_bytes()
    token = pacs.bridge.token([P.VIEW, P.DOWNLOAD])
    try:
        pa.write_bytes(rb)
        pb.write_bytes(ra)
        for n, (inst, path) in enumerate(((a, pa), (b, pb)), start=1):
            resp = pacs.get(f"/instances/{inst['ID']}/file", token)
            assert resp.status_code >= 500, resp.status_code  # an error, never the other file's bytes
            assert b"DICM" not in resp.content and b"Swap^Test" not in resp.content
            # other routes to the same pixels: the rendered preview and WADO-RS fail too
            uid = f"{UID_ROOT}.77{n}"
            for route in (f"/instances/{inst['ID']}/preview",
                          f"/dicom-web/studies/{uid}/series/{uid}.1/instances/{uid}.1.1"):
                other = pacs.get(route, token)
                assert other.status_code >= 400, (route, other.status_code)
                assert b"DICM" not in other.content and b"Swap^Test" not in other.content, route
            # the study archive: Orthanc 1.10 leaves out what it cannot read (an empty ZIP here), never
            # the other file's content
            archive = pacs.get(f"/studies/{inst['ParentStudy']}/archive", token)
            assert b"DICM" not in archive.content and f"Swap^Test{3 - n}".encode() not in archive.content
            events = audit_events("storage.integrity_failure",
                                  lambda e, u=path.name: any(o.get("id") == u for o in e.get("objects", [])))
            assert events, f"no audit event for {path.name}"
            assert events[0]["details"]["reason"] == "damaged" and events[0]["outcome"] == 8
    finally:
        pa.write_bytes(ra)
        pb.write_bytes(rb)
    assert pacs.get(f"/instances/{a['ID']}/file", token).status_code == 200


def test_rotate_storage_while_orthanc_runs_then_restart(pacs: Any, orthanc: dict[str, Any], stack: dict[str, Any],
                                                        studies: dict[str, dict[str, str]]) -> None:
    root, kek_file = Path(orthanc["storage_dir"]), Path(orthanc["storage_kek_file"])
    old = envelope.parse_key_file(kek_file.read_text(), "kek").current
    token = pacs.bridge.token([P.VIEW, P.DOWNLOAD, P.UPLOAD], roles=["technologist"])
    run = _cli("keys", "rotate-storage", "--plugin-config", orthanc["plugin_config"], "--grace", "1")
    assert run.returncode == 0, run.stderr + run.stdout
    ring = envelope.parse_key_file(kek_file.read_text(), "kek")
    assert ring.key_ids == (ring.current,) and ring.current != old
    report = json.loads(run.stdout)
    assert set(report["encrypted_by_key"]) == {ring.current} and report["plaintext"] == 0
    for pid in studies:  # Orthanc running all along: re-wrapped files open at once
        assert pacs.get(f"/instances/{studies[pid]['instance']}/file", token).status_code == 200
    new = _upload(pacs, 3, "ROTATED")
    with restored(stack, "orthanc"):
        stop("orthanc")
        start("orthanc", stack)
    deadline = time.monotonic() + 20
    while pacs.get("/system", token).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    for pid, name, *_ in STUDIES:
        resp = pacs.get(f"/instances/{studies[pid]['instance']}/file", token)
        assert resp.status_code == 200 and name.encode() in resp.content
    assert pacs.get(f"/instances/{new['ID']}/file", token).status_code == 200
    # the Orthanc host's own Python reads the same state from the plugin bundle (no venv there)
    lib = Path(orthanc["plugin_config"]).parent / "plugin-bundle" / plugin_bundle.LIB
    status = subprocess.run(["/usr/bin/python3", "-I", "-c",
                             f"import sys; sys.path.insert(0, {str(lib)!r}); from bridge.pacs import "
                             f"storage_maintenance as m; sys.exit(m.main(sys.argv[1:]))",
                             "status", "--plugin-config", orthanc["plugin_config"]],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert set(json.loads(status.stdout)["encrypted_by_key"]) == {ring.current}
    assert all(envelope.parse_header(p.read_bytes()).key_id == ring.current for p in _files(root).values())


def _http() -> requests.Session:
    """Orthanc serves HTTPS only, with a certificate of the stack's CA (pinned: REQUESTS_CA_BUNDLE
    cannot override it)."""
    return pinned_session(str(ensure_ca()))


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _http().get(url + "/system", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def test_plaintext_storage_is_migrated_online(stack: dict[str, Any]) -> None:
    """Orthanc's own (plaintext) storage, then the same directory and index under the encrypted
    storage area with plaintext reads on, `storage encrypt-plaintext` while it serves, and plaintext
    reads off after a restart."""
    ctx = StackContext(ca_file=Path(stack["ca"]["file"]))
    name = "orthanc-migrate"
    plain = OrthancService(name, with_filter=False, aet="MIGRATEPACS")
    try:
        plain.prepare(ctx)
        plain.start(ctx)
        url = plain.wait_ready(ctx)["url"]
        ids = []
        for n in range(3):
            uid = f"{UID_ROOT}.88{n}"
            data = dicom_instance(patient_id=f"MIG-{n}", patient_name=f"Plain^Patient{n}", study_uid=uid,
                                  series_uid=uid + ".1", sop_uid=uid + ".1.1")
            resp = _http().post(url + "/instances", data=data, timeout=10)
            assert resp.status_code == 200
            ids.append(resp.json()["ID"])
        process.stop(name)
        root = plain.storage_dir
        plain_files = _files(root)
        assert plain_files and all(p.read_bytes()[128:132] == b"DICM" for p in plain_files.values())

        script = storage_area_script(plain.dir / "storage_only.py", plain.dir / "plugin-bundle",
                                     plain.plugin_config_file)
        enc = OrthancService(name, with_filter=True, aet="MIGRATEPACS", python_script=script)
        enc.prepare(ctx)  # writes the plugin settings with the storage object and creates the KEK file
        cfg = json.loads(enc.plugin_config_file.read_text())
        cfg["storage"]["plaintext_reads"] = True
        enc.plugin_config_file.write_text(json.dumps(cfg))
        conf = json.loads(enc.config_file.read_text())
        conf["DicomWeb"]["Root"] = "/dicom-web/"
        enc.config_file.write_text(json.dumps(conf))
        enc.start(ctx)
        url = enc.wait_ready(ctx)["url"]
        _wait_http(url)
        for i in ids:  # plaintext, read as is during the migration window
            assert _http().get(f"{url}/instances/{i}/file", timeout=10).content[128:132] == b"DICM"
        run = _cli("storage", "encrypt-plaintext", "--plugin-config", str(enc.plugin_config_file))
        assert run.returncode == 0, run.stderr + run.stdout
        assert json.loads(run.stdout)["changed"] == len(plain_files)
        for uuid, path in _files(root).items():
            raw = path.read_bytes()
            assert envelope.is_envelope(raw) and b"DICM" not in raw and b"Plain^Patient" not in raw, uuid
        for i in ids:  # Orthanc kept running: the migrated files open
            resp = _http().get(f"{url}/instances/{i}/file", timeout=10)
            assert resp.status_code == 200 and resp.content[128:132] == b"DICM"
        process.stop(name)
        cfg["storage"]["plaintext_reads"] = False
        enc.plugin_config_file.write_text(json.dumps(cfg))
        enc.start(ctx)
        _wait_http(url)
        for n, i in enumerate(ids):
            resp = _http().get(f"{url}/instances/{i}/file", timeout=10)
            assert resp.status_code == 200 and f"Plain^Patient{n}".encode() in resp.content
        assert storage_area.TMP_PREFIX not in " ".join(p.name for p in root.rglob("*"))
    finally:
        process.stop(name)
