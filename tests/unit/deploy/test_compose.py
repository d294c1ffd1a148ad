"""docker-compose.yml parses, mounts the realm files Keycloak imports, provides every placeholder they
use, hands the bridge only environment variables that the configuration model knows, keeps every
secret in a file, and gives Keycloak and the bridge their own database, user and TLS.
(tests/integration/deploy/test_compose_parity.py runs the services.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bridge.config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[3]
BRIDGE_SERVICES = ("bridge-init", "bridge-web", "bridge-serve", "orthanc-config")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_parses_with_the_topology() -> None:
    services = compose()["services"]
    assert {"keycloak", "postgres", "orthanc", *BRIDGE_SERVICES} <= set(services)
    assert services["bridge-web"]["command"] == ["pacs-bridge", "web"]
    assert services["bridge-serve"]["command"] == ["pacs-bridge", "serve"]


def test_keycloak_imports_the_realm_directory_and_gets_every_placeholder() -> None:
    kc = compose()["services"]["keycloak"]
    assert "--import-realm" in kc["command"]
    assert any(v.startswith("./keycloak-realm:/opt/keycloak/data/import") for v in kc["volumes"] if isinstance(v, str))
    realm_files = sorted((ROOT / "keycloak-realm").glob("*.json"))
    assert realm_files, "keycloak-realm/ holds the realm Keycloak imports"
    placeholders = set()
    for f in realm_files:
        placeholders |= set(re.findall(r"\$\{([A-Z0-9_]+)(?::[^}]*)?\}", f.read_text()))
    env = kc["environment"]
    from_files = set(env.get("KC_SECRET_FILES", "").split())  # deploy/keycloak/entrypoint.sh exports these
    assert all(f"{n}_FILE" in env for n in from_files)
    missing = placeholders - set(env) - from_files
    assert not missing, f"realm placeholders without a value in docker-compose.yml: {sorted(missing)}"


def test_bridge_environment_names_real_config_keys() -> None:
    for service in BRIDGE_SERVICES:
        env = compose()["services"][service]["environment"]
        for name in env:
            if name in ("PACS_BRIDGE_CONFIG", "PROMETHEUS_MULTIPROC_DIR"):
                continue
            assert name.startswith(ENV_PREFIX), name
            section, _, key = name[len(ENV_PREFIX):].lower().partition(ENV_NESTED_DELIMITER)
            assert section in Settings.model_fields, f"{name}: no section {section!r}"
            model = Settings.model_fields[section].annotation
            field = key if key in model.model_fields else key.removesuffix("_file")
            assert field in model.model_fields, f"{name}: no key {section}.{field}"


def test_secrets_are_files_never_values() -> None:
    """No password, secret or key appears as a value: every one is a compose secret file."""
    c = compose()
    for name, svc in c["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|_KEK|TOKEN", key) and not key.endswith(("_FILE", "SECRET_FILES")):
                assert value in ("", None), f"{name}: {key} is a value, not a file"
            if key.endswith("_FILE") and "/run/secrets/" in str(value):
                assert str(value).rsplit("/", 1)[1] in svc["secrets"], f"{name}: {key} names a secret it lacks"
    for secret in c["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def test_keycloak_and_the_bridge_have_own_databases_users_and_tls() -> None:
    services = compose()["services"]
    kc = services["keycloak"]["environment"]
    assert kc["KC_DB_USERNAME"] == "keycloak" and "/keycloak?" in kc["KC_DB_URL"]
    assert "sslmode=verify-full" in kc["KC_DB_URL"]
    store = services["bridge-web"]["environment"]["PACS_BRIDGE_STORE__URL"]
    assert store.startswith("postgresql+psycopg2://bridge@postgres:5432/bridge?") and "sslmode=verify-full" in store
    pg = services["postgres"]
    assert "ssl=on" in pg["command"]
    hba = (ROOT / "deploy/postgres/pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert all(r[0] in ("local", "hostssl") for r in rules), "network access to PostgreSQL is TLS only"
    assert ["hostssl", "keycloak", "keycloak"] in [r[:3] for r in rules]
    assert ["hostssl", "bridge", "bridge"] in [r[:3] for r in rules]
    init = (ROOT / "deploy/postgres/init-databases.sh").read_text()
    assert "CREATE DATABASE keycloak OWNER keycloak" in init and "CREATE DATABASE bridge OWNER bridge" in init


def test_orthanc_is_debian_with_the_bundle_and_the_generated_config() -> None:
    from bridge.deploy import plugin_bundle as bundle

    services = compose()["services"]
    orthanc = services["orthanc"]
    assert orthanc["build"]["dockerfile"] == "deploy/orthanc/Dockerfile"
    dockerfile = (ROOT / "deploy/orthanc/Dockerfile").read_text()
    assert "FROM debian:bookworm-slim" in dockerfile
    from pacs_devstack.orthanc import OrthancService

    assert " ".join(OrthancService.runtime_packages) in dockerfile, "the image installs what the tests run"
    assert " ".join(OrthancService.shim_build_packages) in dockerfile, "... and builds the HTTPS shim with it"
    assert not [v for v in orthanc["volumes"] if isinstance(v, str) and v.startswith("./")
                and not v.startswith("./tls/")], "Orthanc mounts nothing of the checkout (./tls/: the site's files)"
    assert "./tls/orthanc:/etc/orthanc/tls:ro" in orthanc["volumes"]
    gen = services["orthanc-config"]["command"]
    out = gen[gen.index("--out") + 1]
    assert orthanc["command"] == [f"{out}/orthanc.json"]
    bundle_dir = gen[gen.index("--bundle") + 1]
    assert f"COPY --from=bundle /out/plugin-bundle {bundle_dir}" in dockerfile
    assert "pacs-bridge plugin bundle /out/plugin-bundle" in dockerfile
    # the plugin's REST helper is built with the HTTPS shim and named to orthanc-config where the image has it
    rest = gen[gen.index("--rest-plugin") + 1]
    assert rest.endswith("/libPacsBridgeRest.so")
    assert f"COPY --from=bundle /out/civetweb-tls {rest.rsplit('/', 1)[0]}" in dockerfile
    assert bundle.ENTRY == "pacs_bridge_plugin.py"
