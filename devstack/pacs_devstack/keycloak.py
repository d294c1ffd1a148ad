"""Keycloak for the dev stack: HTTPS-only on loopback with the hospital realms imported.

Why `kc.sh build` once + `start --optimized` rather than `start-dev`: start-dev re-runs the
Quarkus augmentation on every start (11 s idle, 33 s on a busy two-core box), and opens a plain
HTTP listener that cannot be switched off.  The optimized production start skips both, and its
strict hostname handling pins the issuer.  Build-time options are `BUILD_OPTIONS`; H2 in memory
(`dev-mem`) keeps every start clean and needs no database server.

Layout: the distribution is downloaded by Maven and unpacked once into the cache
(`~/.cache/pacs-bridge/keycloak-<v>`, never written to at run time); the augmented build output
(`lib/quarkus`) is cached next to it, keyed by version and build options.  Each stack gets its own
small Keycloak *home* in `<state>/keycloak/home`: copies of `bin/`, `conf/` and the build output
and symlinks to the 160 MB of jars, so stacks running at once share nothing writable.  `data/`
(realm import files, temp files) is recreated on every `prepare`.

Realms `hospital` (Samba AD) and `hospital-ldap` (OpenLDAP) come from `pacs_devstack.realm`;
their `${...}` placeholders are filled from the environment of the Keycloak process.  OpenLDAP's
port is only known once slapd runs, hence ``needs = ("slapd",)``: the stack starts Keycloak after
slapd is ready.  `seed` imports the directory users (full sync) and gives each a TOTP credential
from the demo data, except `NO_OTP_USER`, so tests can exercise password-only logins and step-up.
It does so through the bridge's own admin client (python-keycloak, built by bridge/kcadmin.py),
which the integration tests use too (`stack_admin`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from keycloak.exceptions import KeycloakError

from bridge.kcadmin import admin_client
from pacs_devstack import demo_data, install, process, realm
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import cache_dir, free_port
from pacs_devstack.tls import issue

if TYPE_CHECKING:
    from keycloak import KeycloakAdmin

KEYCLOAK_VERSION = "26.5.6"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
#: Keycloak 26.5 supports JDK 17 and 21; Debian bookworm ships 17
JAVA_HOME = Path("/usr/lib/jvm/java-17-openjdk-amd64")
HEAP = "-Xms256m -Xmx768m"
#: build-time options, baked into the cached `lib/quarkus` (changing them changes the cache key)
BUILD_OPTIONS = ("--db=dev-mem", "--health-enabled=true")
READY_TIMEOUT = 240.0
ADMIN_USERNAME = "admin"
#: admin API timeout (s): a full sync of the demo directory, a user update re-validated against it
ADMIN_TIMEOUT = 120

#: secrets (StackContext.secret names)
ADMIN_SECRET = "keycloak-admin"
BIND_SECRET = "directory-bind"
CLIENT_SECRET = "kc-pacs-bridge-client"

#: a referring physician who gets no TOTP credential: password-only logins and OTP enrolment
NO_OTP_USER = "ref.zoe"

#: fixed facts of the Samba AD part (LDAPS port 636 is fixed by Samba itself)
SAMBA_DEFAULTS = {"ldaps_url": "ldaps://127.0.0.1:636",
                  "bind_dn": "CN=svc-pacs-bridge,OU=Service Accounts,DC=hospital,DC=test"}
SLAPD_DEFAULT_BIND_DN = "cn=svc-pacs-bridge,ou=Service Accounts,dc=hospital,dc=test"
#: which stack service backs which realm
REALM_DIRECTORY = {realm.AD_REALM: "samba", realm.LDAP_REALM: "slapd"}


def dist_dir() -> Path:
    return cache_dir() / f"keycloak-{KEYCLOAK_VERSION}"


def build_dir() -> Path:
    """The cached output of `kc.sh build BUILD_OPTIONS` (a `lib/quarkus` directory)."""
    key = hashlib.sha256(" ".join(BUILD_OPTIONS).encode()).hexdigest()[:10]
    return cache_dir() / f"keycloak-{KEYCLOAK_VERSION}-build-{key}"


def _java_env() -> dict[str, str]:
    if not (JAVA_HOME / "bin" / "java").exists():
        raise DevstackError(f"Keycloak {KEYCLOAK_VERSION} needs JDK 17 at {JAVA_HOME} "
                            "(apt-get install openjdk-17-jre-headless)")
    return {"JAVA_HOME": str(JAVA_HOME), "JAVA_OPTS_KC_HEAP": HEAP}


def _build(dist: Path, dest: Path) -> None:
    """Run the Quarkus augmentation once in a scratch home and keep its `lib/quarkus` (atomically)."""
    scratch = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        _make_home(dist, scratch / "home", quarkus=dist / "lib" / "quarkus")
        process.run([str(scratch / "home" / "bin" / "kc.sh"), "build", *BUILD_OPTIONS],
                    what=f"Keycloak {KEYCLOAK_VERSION} build (Quarkus augmentation)", env=_java_env(),
                    timeout=900, cwd=scratch / "home")
        try:
            (scratch / "home" / "lib" / "quarkus").rename(dest)
        except OSError:
            if not (dest / "quarkus-application.dat").exists():  # not just lost a race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack the zip atomically (tmp dir + rename), keeping the executable bits zipfile drops."""
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            path = Path(zf.extract(member, tmp))
            mode = (member.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)
    top = tmp / f"keycloak-{KEYCLOAK_VERSION}"
    if not (top / "bin" / "kc.sh").exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise DevstackError(f"{archive}: no keycloak-{KEYCLOAK_VERSION}/bin/kc.sh inside; delete it, retry")
    try:
        top.rename(dest)
    except OSError:
        if not (dest / "bin" / "kc.sh").exists():  # not just lost a race with another unpack
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_home(dist: Path, home: Path, *, quarkus: Path) -> None:
    """A private Keycloak home: writable copies of the small parts, the jars shared by symlink.

    `quarkus` is the build output to use (the dist's own, or the cached optimized build).
    """
    shutil.rmtree(home, ignore_errors=True)
    (home / "lib").mkdir(parents=True)
    for part in ("bin", "conf", "lib/app"):
        shutil.copytree(dist / part, home / part, symlinks=True)
    shutil.copytree(quarkus, home / "lib" / "quarkus")
    shutil.copy2(dist / "lib" / "quarkus-run.jar", home / "lib" / "quarkus-run.jar")
    for part in ("lib/lib", "themes", "providers"):
        (home / part).symlink_to(dist / part)


def _bridge_url() -> str:
    """The stack's bridge URL (its port is chosen before Keycloak starts; see devstack/bridge.py)."""
    from pacs_devstack.bridge import SERVICE as BRIDGE

    return BRIDGE.url()


class Keycloak(Service):
    name = "keycloak"
    apt_packages = ("openjdk-17-jre-headless", "maven")
    needs = ("slapd",)

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    def install(self) -> None:
        """Download and unpack the distribution and build it once (needs no network after the download)."""
        if not (dist_dir() / "bin" / "kc.sh").exists():
            archive = install.maven_copy(ARTIFACT, cache_dir() / "maven")
            _unpack(archive, dist_dir())
        if not (build_dir() / "quarkus-application.dat").exists():
            _build(dist_dir(), build_dir())

    def prepare(self, ctx: StackContext) -> None:
        if not (build_dir() / "quarkus-application.dat").exists():
            self.install()
        _make_home(dist_dir(), self.home, quarkus=build_dir())
        log = self.dir / "server.log"
        if log.exists():  # one start per log: tests read this run's import messages
            log.replace(log.with_suffix(".log.1"))
        realm.write_import_dir(self.home / "data" / "import")
        ports = {"https": free_port(), "management": free_port()}
        self.ports_file.write_text(json.dumps(ports))
        issue("keycloak")

    def _ports(self) -> dict[str, int]:
        return json.loads(self.ports_file.read_text())

    def base_url(self) -> str:
        return f"https://127.0.0.1:{self._ports()['https']}"

    def _env(self, ctx: StackContext) -> dict[str, str]:
        samba = {**SAMBA_DEFAULTS, **ctx.info.get("samba", {})}
        slapd = ctx.info.get("slapd", {})
        return {
            **_java_env(),
            "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USERNAME,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": ctx.secret(ADMIN_SECRET),
            "PACS_DIR_URL": samba["ldaps_url"],
            "PACS_DIR_BIND_DN": samba["bind_dn"],
            "PACS_DIR_BIND_PASSWORD": ctx.secret(BIND_SECRET),
            # without slapd the realm still imports; logins on hospital-ldap then fail clearly
            "PACS_LDAP_URL": slapd.get("ldaps_url", "ldaps://127.0.0.1:1"),
            "PACS_LDAP_BIND_DN": slapd.get("bind_dn", SLAPD_DEFAULT_BIND_DN),
            "PACS_BRIDGE_CLIENT_SECRET": ctx.secret(CLIENT_SECRET),
            # the bridge's login callback and back-channel logout URL (tests running their own
            # bridge on another port re-point the client through the admin API)
            "PACS_BRIDGE_URL": _bridge_url(),
        }

    def start(self, ctx: StackContext) -> None:
        ports = self._ports()
        tls = issue("keycloak")
        argv = [
            str(self.home / "bin" / "kc.sh"), "start", "--optimized",
            "--import-realm",
            "--cache=local",  # no clustering: no JGroups ports
            "--http-enabled=false",
            "--http-host=127.0.0.1",  # binds the HTTPS listener
            f"--https-port={ports['https']}",
            f"--https-certificate-file={tls.cert}", f"--https-certificate-key-file={tls.key}",
            f"--hostname=https://127.0.0.1:{ports['https']}",
            "--http-management-host=127.0.0.1", f"--http-management-port={ports['management']}",
            "--http-management-scheme=http",
            f"--truststore-paths={tls.ca}",
        ]
        process.start(self.name, argv, env=self._env(ctx), cwd=self.home)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        ports = self._ports()
        health = f"http://127.0.0.1:{ports['management']}/health/ready"
        base = self.base_url()

        def ready() -> bool:
            if requests.get(health, timeout=2).status_code != 200:
                return False
            # health is UP before the realm import is visible on some starts: wait for both realms
            return all(
                requests.get(f"{base}/realms/{name}/.well-known/openid-configuration", timeout=5,
                             verify=str(ctx.ca_file)).status_code == 200
                for name in REALM_DIRECTORY)

        process.wait_until(ready, what=f"Keycloak {KEYCLOAK_VERSION} ({health})", timeout=READY_TIMEOUT,
                           rec=process.load(self.name), interval=1.0)
        return {
            "url": base,
            "realm": realm.AD_REALM,
            "realms": {name: {"directory": d, "ldap_component_id": realm.COMPONENT_IDS[name],
                              "issuer": f"{base}/realms/{name}"}
                       for name, d in REALM_DIRECTORY.items()},
            "admin_username": ADMIN_USERNAME,
            "admin_password_secret": ADMIN_SECRET,
            "client_secret_secret": CLIENT_SECRET,
            "health_url": health,
            "no_otp_user": NO_OTP_USER,
            "log": str(self.dir / "server.log"),
            "version": KEYCLOAK_VERSION,
        }

    def seed(self, ctx: StackContext) -> None:
        """Import the directory users and give each a TOTP credential (except `NO_OTP_USER`)."""
        url = ctx.info[self.name]["url"]
        for name, directory in REALM_DIRECTORY.items():
            if directory not in ctx.info:
                continue  # that directory is not part of this stack
            seed_otp(admin_for(url, name, ctx), realm.COMPONENT_IDS[name])


def admin_for(url: str, realm_name: str, ctx: StackContext, *, username: str = ADMIN_USERNAME) -> KeycloakAdmin:
    """python-keycloak's ``KeycloakAdmin`` on ``realm_name``, logged in as the stack's bootstrap admin
    of ``master``: the bridge's own client, built by :func:`bridge.kcadmin.admin_client` (the one
    place that builds it), TLS verified against the stack CA.  It logs in on its first call and
    renews its token itself (master admin tokens live 60 s), so a caller may keep it."""
    return admin_client(url, realm_name, username, ctx.secret(ADMIN_SECRET), ca_file=ctx.ca_file,
                        timeout=ADMIN_TIMEOUT)


def stack_admin(stack: dict[str, Any], realm_name: str) -> KeycloakAdmin:
    """:func:`admin_for` from a running stack's info (``.devstack/stack.json``): tests and tools."""
    kc = stack["keycloak"]
    return admin_for(kc["url"], realm_name, StackContext(ca_file=Path(stack["ca"]["file"])),
                     username=kc["admin_username"])


@contextmanager
def admin_step(what: str) -> Iterator[None]:
    """A failed admin call (an HTTP error, an unreachable server) as a :class:`DevstackError` that
    says what was being done; python-keycloak's own message says only the status and Keycloak's text."""
    try:
        yield
    except (KeycloakError, OSError) as exc:
        raise DevstackError(f"Keycloak admin API: {what}: {exc}") from exc


def totp_credential(secret_base32: str) -> dict[str, Any]:
    """An OTP credential representation whose key is the base32 secret an authenticator app holds."""
    return {
        "type": "otp", "userLabel": "demo authenticator", "temporary": False,
        "secretData": json.dumps({"value": secret_base32}),
        "credentialData": json.dumps({"subType": "totp", "digits": 6, "counter": 0, "period": 30,
                                      "algorithm": "HmacSHA1", "secretEncoding": "BASE32"}),
    }


def seed_otp(admin: KeycloakAdmin, component_id: str) -> dict[str, Any]:
    """Full-sync the LDAP users of the admin client's realm into Keycloak, then attach each demo
    user's TOTP secret."""
    realm_name = admin.connection.realm_name
    t0 = time.monotonic()
    with admin_step(f"full user sync of realm {realm_name}"):
        result = admin.sync_users(component_id, "triggerFullSync")
    if result and result.get("failed"):
        raise DevstackError(f"Keycloak realm {realm_name}: user sync failed for {result['failed']} users: "
                            f"{result.get('status')}")
    with admin_step(f"list users of realm {realm_name}"):
        users = {u["username"]: u for u in admin.get_users({"briefRepresentation": True})}
    wanted = [u for u in demo_data.users() if u["username"] != NO_OTP_USER and not u["disabled"]]
    missing = [u["username"] for u in wanted if u["username"] not in users]

    def add_otp(demo_user: dict[str, Any]) -> None:
        # the database is fresh (dev-mem, seeded once per start): no credential exists yet
        with admin_step(f"seed TOTP of {demo_user['username']} in realm {realm_name}"):
            admin.update_user(users[demo_user["username"]]["id"],
                              {"credentials": [totp_credential(demo_user["totp_secret"])]})

    # each update re-validates the user against the directory (~150 ms): a few in parallel
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(add_otp, [u for u in wanted if u["username"] in users]))
    if missing:
        raise DevstackError(f"Keycloak realm {realm_name}: directory users not found after sync: "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return {"sync": result, "seconds": round(time.monotonic() - t0, 1)}


SERVICE = Keycloak()
