"""Orthanc (Debian's 1.10.1) as the dev stack's PACS, with the bridge's Python request filter.

Transport: HTTPS only, with a certificate of the stack CA (every client verifies it), and DICOM TLS
only, admitting client certificates of the *modalities* CA alone (pacs_devstack.tls.MODALITY_CA);
:func:`modality_tls` gives a test or a demo modality its trusted client certificate.  Debian's
Orthanc needs the civetweb OpenSSL 3 shim for HTTPS (bridge/deploy/civetweb_tls.py), built once
into the stack's state directory.

Readiness: the filter fails closed and denies *every* HTTP request, ``GET /system`` included,
and it must not grow a health-check exception (an unauthenticated hole is exactly what it is
there to prevent).  So "ready" means: the log says "Orthanc has started", and an HTTP request to
``/system`` gets an answer, where 403 counts as up (the filter ran) as well as 200 (the plain
instance without filter).  Anything else (500 = filter crashed) is not ready.

Orthanc 1.10.1 cannot bind to 127.0.0.1 only (no bind-address option exists): both listeners
bind every interface.  ``RemoteAccessAllowed: false`` makes Orthanc refuse HTTP from
non-loopback peers, and the DICOM listener accepts only configured modalities from their host
(see bridge/deploy/orthanc_config.py).

With the bridge plugin, Orthanc's image store is the plugin's encrypted storage area over the
storage directory (``storage-kek.json`` in the service's directory is the Orthanc host's storage
KEK, created on the first start and kept), so every integration test runs over encrypted storage.

`OrthancService` is parameterised so a second instance without the filter (``orthanc-plain``,
a benchmark baseline) is one line: ``OrthancService("orthanc-plain", with_filter=False)``.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bridge.deploy import c_build, civetweb_tls, orthanc_rest_plugin
from bridge.deploy.orthanc_config import (
    DICOMWEB_PLUGIN,
    PYTHON_PLUGIN,
    WEB_VIEWER_PLUGIN,
    DicomTls,
    dicom_modalities,
    orthanc_config,
    plugin_settings,
    write_find_audit_script,
)
from pacs_devstack import process, tls
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port, port_open, service_dir

BINARY = Path("/usr/sbin/Orthanc")
#: the dev stack's one DICOM peer (tests associate with this AE title from 127.0.0.1)
DEV_MODALITIES = {"dev-modality": {"aet": "DEVMODALITY", "host": "127.0.0.1", "port": 11112}}
STARTED_LINE = "Orthanc has started"
#: where the bridge's gateway connects from in the dev stack (everything runs on loopback): the
#: plugin trusts its workstation header from these addresses only
GATEWAY_ADDRESSES = ("127.0.0.1/32", "::1/128")


def _http_status(url: str, ca_file: Path, timeout: float = 2.0) -> int:
    """The status of a GET over verified HTTPS (any status, no exception for 4xx/5xx)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310 - fixed https://127.0.0.1 URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def shim_dir() -> Path:
    """The civetweb OpenSSL 3 shim (bridge/deploy/civetweb_tls.py) and the plugin's REST helper
    (bridge/deploy/orthanc_rest_plugin.py), built once per state directory."""
    d = service_dir("civetweb-tls")
    try:
        if not civetweb_tls.built(d):
            civetweb_tls.build(d)
        if not orthanc_rest_plugin.built(d):
            orthanc_rest_plugin.build(d)
    except c_build.BuildError as exc:
        raise DevstackError(f"orthanc: {exc}") from None
    return d


def connection(port: int, timeout: float = 10.0) -> http.client.HTTPSConnection:
    """A keep-alive HTTPS connection to a dev-stack Orthanc on loopback, verified against the stack
    CA (benchmarks: no session layer between the measurement and the socket)."""
    context = ssl.create_default_context(cafile=str(tls.ensure_ca()))
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)


def modality_tls(aet: str = "DEVMODALITY") -> tuple[ssl.SSLContext, str]:
    """pynetdicom's ``tls_args`` for the modality ``aet``: its client certificate from the modalities
    CA, Orthanc verified against the stack CA (``ae.associate(..., tls_args=modality_tls())``)."""
    pair = tls.issue_modality(aet)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ensure_ca()))
    context.load_cert_chain(str(pair.cert), str(pair.key))
    return context, "localhost"


class OrthancService(Service):
    #: what Orthanc runs with (the Orthanc image installs the same)
    runtime_packages = ("orthanc", "orthanc-python", "orthanc-dicomweb", "orthanc-webviewer", "python3-jwt",
                        "python3-cryptography")
    #: what builds the civetweb OpenSSL 3 shim (HTTPS; bridge/deploy/civetweb_tls.py), once
    #: ... and the plugin's REST helper (bridge/deploy/orthanc_rest_plugin.py: Orthanc's SDK header)
    shim_build_packages = ("gcc", "libc6-dev", "orthanc-dev")
    apt_packages = runtime_packages + shim_build_packages

    def __init__(self, name: str = "orthanc", *, with_filter: bool = True, aet: str = "PACSTEST",
                 python_script: Path | None = None) -> None:
        self.name = name
        self.with_filter = with_filter
        #: with the filter, the plugin trusts the stack's bridge (its JWKS, revocations, audit intake)
        self.needs = ("bridge",) if with_filter else ()
        #: another Python script instead of the bridge plugin's bundle (the benchmark's allow-all floor)
        self.python_script = python_script
        self.aet = aet
        self._ports: tuple[int, int] | None = None

    @property
    def config_file(self) -> Path:
        return self.dir / "orthanc.json"

    def internal_url(self) -> str:
        """Orthanc's HTTPS URL on loopback (the port is fixed for this `up`: :meth:`sticky_port`)."""
        return f"https://127.0.0.1:{self.sticky_port()}"

    @property
    def plugin_config_file(self) -> Path:
        """The bridge plugin's settings; tests may rewrite it (the plugin reloads it on change)."""
        return self.dir / "bridge-plugin.json"

    @property
    def storage_dir(self) -> Path:
        """Orthanc's storage directory: with the bridge plugin, every file in it is encrypted."""
        return self.dir / "storage"

    @property
    def storage_kek_file(self) -> Path:
        """The Orthanc host's storage KEK (created once per state dir, kept across restarts)."""
        return self.dir / "storage-kek.json"

    @property
    def plugin_bundle_dir(self) -> Path:
        """Where ``pacs-bridge plugin bundle`` writes the plugin this Orthanc loads (rebuilt on each start)."""
        return self.dir / "plugin-bundle"

    def _write_plugin_config(self, ctx: StackContext, settings: Any) -> None:
        bridge = ctx.info.get("bridge", {})
        issuer = bridge.get("url") or settings.tokens.issuer or settings.bridge.public_url
        audit: dict[str, Any] = {}
        if bridge.get("url") and bridge.get("audit_ingest_secret"):
            token_file = self.dir / "audit-ingest.token"
            token_file.write_text(ctx.secret(bridge["audit_ingest_secret"]))
            token_file.chmod(0o600)
            audit = {"audit_url": bridge["url"] + "/audit/events", "audit_token_file": token_file}
        if not self.storage_kek_file.exists():
            from bridge.core.envelope import create_key_file

            create_key_file(str(self.storage_kek_file))
        data = plugin_settings(
            issuer=issuer, audience=settings.pacs.audience, ca_file=ctx.ca_file,
            spool_dir=self.dir / "audit-spool", orthanc_log_file=self.dir / "server.log", pacs_name=self.name,
            mfa=settings.mfa, gateway_addresses=GATEWAY_ADDRESSES, **audit,
            # the image store is encrypted (docs/encryption.md): every integration test runs over it
            storage_dir=self.storage_dir, storage_kek_file=self.storage_kek_file,
        )
        self.plugin_config_file.write_text(json.dumps(data, indent=2), encoding="utf-8")

    def prepare(self, ctx: StackContext) -> None:
        needed = [BINARY, DICOMWEB_PLUGIN, WEB_VIEWER_PLUGIN, *((PYTHON_PLUGIN,) if self.with_filter else ())]
        for path in needed:
            if not path.exists():
                raise DevstackError(f"{self.name}: {path} is missing "
                                    f"(apt packages: {' '.join(self.apt_packages)})")
        # the HTTP port is chosen once per `up`: the bridge's gateway names Orthanc's URL before
        # Orthanc starts (Orthanc's plugin needs the bridge first)
        http_port, dicom_port = self.sticky_port(), free_port()
        while dicom_port == http_port:
            dicom_port = free_port()
        self._ports = (http_port, dicom_port)
        (self.dir / "storage").mkdir(exist_ok=True)
        (self.dir / "index").mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        native = shim_dir()
        server = tls.issue("orthanc")
        https_pem = tls.pem_bundle(server, self.dir / "https.pem")
        dicom_tls = DicomTls(certificate=server.cert, private_key=server.key,
                             trusted_certificates=tls.ensure_ca(tls.MODALITY_CA))
        from bridge.config import load_config

        settings = load_config(None, **({} if os.environ.get("PACS_BRIDGE_PACS__MODALITIES")
                                        else {"pacs": {"modalities": DEV_MODALITIES}}))
        script = self.python_script
        if self.with_filter:
            self._write_plugin_config(ctx, settings)
            if script is None:  # the bundle, as a deployment installs it: never the checkout
                from bridge.deploy import plugin_bundle as bundle

                bundle.build(self.plugin_bundle_dir)
                script = self.plugin_bundle_dir / bundle.ENTRY
        config = orthanc_config(
            name=self.name, aet=self.aet, http_port=http_port, dicom_port=dicom_port,
            storage_dir=self.dir / "storage", index_dir=self.dir / "index", with_filter=self.with_filter,
            https_certificate=https_pem, dicom_tls=dicom_tls,
            lua_scripts=(write_find_audit_script(self.dir),) if self.with_filter else (),
            modalities=dicom_modalities(settings.pacs),
            plugin_config_file=self.plugin_config_file if self.with_filter else None,
            python_script=script, web_viewer_cache_dir=self.dir / "webviewer-cache",
            temporary_dir=self.dir / "tmp",  # beside the index and the viewer cache: one volume covers all
            rest_plugin=native / orthanc_rest_plugin.LIBRARY if self.with_filter else None,
            # no read cache: every read goes through the storage area (a tampered file is seen at once)
            extra={"MaximumStorageCacheSize": 0},
        )
        self.config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def _config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DevstackError(f"{self.name}: cannot read {self.config_file}: {exc}") from None

    def start(self, ctx: StackContext) -> None:
        # a fresh log per start so the "started" line is this run's
        (self.dir / "server.log").unlink(missing_ok=True)
        process.start(self.name, [str(BINARY), str(self.config_file)], cwd=self.dir,
                      env={civetweb_tls.ENV_VAR: str(shim_dir())})

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        config = self._config()
        http_port, dicom_port = int(config["HttpPort"]), int(config["DicomPort"])
        url = f"https://127.0.0.1:{http_port}"
        rec = process.load(self.name)
        log = self.dir / "server.log"
        # the bridge plugin denies a token-less /system; a plain Orthanc (or another script) answers it
        accepted = {403} if self.with_filter and self.python_script is None else {200}

        def ready() -> bool:
            return (
                STARTED_LINE in log.read_text(errors="replace")
                and port_open(dicom_port)
                and _http_status(f"{url}/system", ctx.ca_file) in accepted
            )

        process.wait_until(ready, what=f"{self.name} (Orthanc)", timeout=60, rec=rec, interval=0.1)
        return {
            "url": url, "ca_file": str(ctx.ca_file), "dicom_port": dicom_port, "aet": config["DicomAet"],
            "filter": self.with_filter, "dicom_tls": True,
            "modality_ca_file": config["DicomTlsTrustedCertificates"],
            "modalities": config["DicomModalities"],
            "storage_dir": str(self.storage_dir),
            **({"plugin_config": str(self.plugin_config_file), "log": str(log),
                "storage_kek_file": str(self.storage_kek_file)} if self.with_filter else {}),
        }


def storage_area_script(path: Path, bundle_dir: Path, plugin_config_file: Path, *, allow_all: bool = True) -> Path:
    """A PythonScript that registers only the bridge's encrypted storage area (from the plugin bundle
    in ``bundle_dir``, settings from the ``storage`` object of ``plugin_config_file``) and, with
    ``allow_all``, a filter that allows every request: the storage benchmark's encrypted Orthanc and
    the migration test's, where the storage is measured or migrated without the token filter."""
    from bridge.deploy import plugin_bundle

    plugin_bundle.build(bundle_dir)
    lib = bundle_dir / plugin_bundle.LIB
    path.write_text(
        "import json, sys\n"
        "import orthanc\n"
        f"sys.path.insert(0, {str(lib)!r})\n"
        "from bridge.pacs import storage_area\n"
        f"_cfg = json.load(open({str(plugin_config_file)!r}))\n"
        f"_s = storage_area.StorageSettings.from_mapping(_cfg['storage'], {str(plugin_config_file)!r})\n"
        "_conf = json.loads(orthanc.GetConfiguration())\n"
        "_area = storage_area.build(_s, sync=bool(_conf.get('SyncStorageArea', True)),\n"
        "    on_failure=lambda f: orthanc.LogError('storage failure ' + f.uuid + ' ' + f.reason))\n"
        "orthanc.RegisterStorageArea(_area.create, _area.read, _area.remove)\n"
        + ("orthanc.RegisterIncomingHttpRequestFilter(lambda uri, **kw: True)\n" if allow_all else ""),
        encoding="utf-8")
    return path


SERVICE = OrthancService()
