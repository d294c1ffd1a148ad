"""docker-compose.yml parses, mounts the realm files Keycloak imports, provides every placeholder they
use, and hands the bridge only environment variables that the configuration model knows."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bridge.config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[3]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_parses_with_the_topology() -> None:
    services = compose()["services"]
    assert {"keycloak", "postgres", "orthanc", "bridge"} <= set(services)


def test_keycloak_imports_the_realm_directory_and_gets_every_placeholder() -> None:
    kc = compose()["services"]["keycloak"]
    assert "--import-realm" in kc["command"]
    assert any(v.startswith("./keycloak-realm:/opt/keycloak/data/import") for v in kc["volumes"] if isinstance(v, str))
    realm_files = sorted((ROOT / "keycloak-realm").glob("*.json"))
    assert realm_files, "keycloak-realm/ holds the realm Keycloak imports"
    placeholders = set()
    for f in realm_files:
        placeholders |= set(re.findall(r"\$\{([A-Z0-9_]+)(?::[^}]*)?\}", f.read_text()))
    missing = placeholders - set(kc["environment"])
    assert not missing, f"realm placeholders without a value in docker-compose.yml: {sorted(missing)}"


def test_bridge_environment_names_real_config_keys() -> None:
    env = compose()["services"]["bridge"]["environment"]
    for name in env:
        if name == "PACS_BRIDGE_CONFIG":
            continue
        assert name.startswith(ENV_PREFIX), name
        section, _, key = name[len(ENV_PREFIX):].lower().partition(ENV_NESTED_DELIMITER)
        assert section in Settings.model_fields, f"{name}: no section {section!r}"
        model = Settings.model_fields[section].annotation
        field = key if key in model.model_fields else key.removesuffix("_file")
        assert field in model.model_fields, f"{name}: no key {section}.{field}"


def test_orthanc_loads_the_plugin_bundle_not_the_checkout() -> None:
    from bridge.pacs import bundle

    orthanc = compose()["services"]["orthanc"]
    mounts = [v for v in orthanc["volumes"] if isinstance(v, str) and v.startswith("./")]
    assert not [m for m in mounts if m.startswith("./bridge")], "Orthanc must not mount the checkout"
    bundle_mount = next(m for m in mounts if m.startswith("./plugin-bundle:"))
    target = bundle_mount.split(":")[1]
    assert orthanc["environment"]["ORTHANC__PYTHON_SCRIPT"] == f"{target}/{bundle.ENTRY}"
