"""deploy/keycloak/entrypoint.sh turns secret files into the variables Keycloak reads, and refuses
to start Keycloak when one is missing (rather than with an empty password)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy" / "keycloak" / "entrypoint.sh"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "KC_SH": "/usr/bin/env", **env},
                          capture_output=True, text=True, timeout=10, check=False)


def test_secret_files_become_variables(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("s3cret-a\n")
    (tmp_path / "b").write_text("pa ss:b")
    res = _run({"KC_SECRET_FILES": "KC_DB_PASSWORD PACS_DIR_BIND_PASSWORD",
                "KC_DB_PASSWORD_FILE": str(tmp_path / "a"), "PACS_DIR_BIND_PASSWORD_FILE": str(tmp_path / "b")})
    assert res.returncode == 0, res.stderr
    assert "KC_DB_PASSWORD=s3cret-a\n" in res.stdout and "PACS_DIR_BIND_PASSWORD=pa ss:b\n" in res.stdout


def test_a_missing_secret_file_stops_the_start(tmp_path: Path) -> None:
    res = _run({"KC_SECRET_FILES": "KC_DB_PASSWORD", "KC_DB_PASSWORD_FILE": str(tmp_path / "missing")})
    assert res.returncode != 0 and "KC_DB_PASSWORD=" not in res.stdout


def test_a_listed_name_without_its_file_variable_stops_the_start() -> None:
    res = _run({"KC_SECRET_FILES": "KC_DB_PASSWORD"})
    assert res.returncode != 0 and "KC_DB_PASSWORD=" not in res.stdout
