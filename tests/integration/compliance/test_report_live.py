"""The compliance report against the running dev stack: live TLS handshakes, the real audit
chain, OTP credentials counted through Keycloak's admin API; a hop switched to plain and a
missing test report each turn their control from pass to fail / missing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import load_config

pytestmark = pytest.mark.integration


def _run(config: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["compliance", "report", "--config", str(config), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    html = (out / "compliance-report.html").read_text()
    assert "Compliance evidence report" in html
    return json.loads((out / "compliance-report.json").read_text())


def _evidence(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["check"]: e for e in rep["evidence"]}


def _controls(rep: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in rep["controls"]}


@pytest.fixture(scope="module")
def junit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bridge.compliance.report import release

    path = tmp_path_factory.mktemp("junit") / "report.xml"
    path.write_text(f'<testsuites><testsuite name="pytest" tests="3" failures="0" errors="0" skipped="0">'
                    f'<properties><property name="version" value="{release()}"/></properties>'
                    f"</testsuite></testsuites>")
    return path


def test_the_report_reads_live_evidence(stack: dict[str, Any], tmp_path: Path, junit: Path) -> None:
    if "keycloak" not in stack or "bridge" not in stack:
        pytest.skip("needs keycloak and the bridge")
    config = Path(stack["bridge"]["config"])
    settings = load_config(config)
    # an account without a second factor, as a console user would create it
    from bridge.kcadmin import admin_from_settings

    admin = admin_from_settings(settings.keycloak)
    name = f"no-otp-{uuid.uuid4().hex[:6]}"
    uid = admin.create_user({"username": name, "enabled": True})
    try:
        rep = _run(config, tmp_path / "live", "--test-report", str(junit))
    finally:
        admin.delete_user(uid)
    ev = _evidence(rep)
    assert ev["tls.keycloak"]["status"] == "pass", ev["tls.keycloak"]
    assert ev["tls.directory"]["status"] == "pass", ev["tls.directory"]
    assert ev["tls.store"]["status"] == "pass", ev["tls.store"]
    if "rsyslog" in stack:
        assert ev["tls.syslog"]["status"] == "pass", ev["tls.syslog"]  # with the client certificate
    assert ev["audit.chain"]["status"] == "pass" and ev["audit.chain"]["data"]["records"] > 0
    assert ev["keys"]["status"] == "pass", ev["keys"]
    assert ev["mfa.accounts"]["status"] == "fail" and name in ev["mfa.accounts"]["data"]["without"]
    assert ev["tests"]["status"] == "pass"
    if "orthanc" in stack:  # the dev stack's Orthanc stores through the encrypted storage area
        assert ev["storage.image_store"]["status"] == "pass", ev["storage.image_store"]
    assert _controls(rep)["hipaa-d-authentication"] == "fail"
    assert _controls(rep)["hipaa-c1-integrity"] in ("pass", "missing")  # no archive yet: missing, never pass


def test_a_hop_switched_to_plain_and_a_missing_test_report_fail(stack: dict[str, Any], tmp_path: Path) -> None:
    if "keycloak" not in stack or "bridge" not in stack:
        pytest.skip("needs keycloak and the bridge")
    data = yaml.safe_load(Path(stack["bridge"]["config"]).read_text())
    kc = data["keycloak"]["url"]
    data["keycloak"].update(url=kc.replace("https://", "http://"), allow_plaintext=True)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    plain.chmod(0o600)
    rep = _run(plain, tmp_path / "plain", "--test-report", str(tmp_path / "absent.xml"))
    ev = _evidence(rep)
    assert ev["tls.keycloak"]["status"] == "fail" and "without TLS" in ev["tls.keycloak"]["detail"]
    assert ev["config.plaintext"]["status"] == "fail"
    assert _controls(rep)["hipaa-e1-transmission"] == "fail"
    assert ev["tests"]["status"] == "missing"
    assert _controls(rep)["gdpr-32-1d"] in ("missing", "fail")
    assert rep["status"] == "fail"
