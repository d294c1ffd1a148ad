"""Orthanc's configuration, generated as one JSON document (Orthanc 1.10.1 + orthanc-python 4.0).

Kept apart from the dev stack so the PACS part can extend it (authorization settings, viewer
plugins) and a deployment can generate the same secure defaults.  Choices and why:

- ``AuthenticationEnabled: false`` *explicitly*: otherwise Orthanc's built-in Basic auth also
  claims the ``Authorization`` header and runs before the bridge's Python request filter.
- ``RemoteAccessAllowed: false``: Orthanc 1.10.1 has no option to bind HTTP or DICOM to one
  address (there is no ``HttpBindAddress``/``DicomBindAddress``; both listeners bind every
  interface).  With remote access off, Orthanc answers HTTP requests from non-loopback peers
  with 403 before any handler runs; DICOM is guarded by the settings below.
- DICOM: no ``DicomAlwaysAllow*``, the called AET must be Orthanc's own, and a peer must be a
  configured modality *from its configured host* (``DicomCheckModalityHost``).
- HTTPS only (``SslEnabled``, TLS 1.2 or later): there is no plain HTTP port.  Debian bookworm's
  Orthanc needs the civetweb shim for that (bridge/deploy/civetweb_tls.py, ``LD_LIBRARY_PATH``).
- DICOM TLS only (``DicomTlsEnabled``) with a client certificate required from every peer
  (``DicomTlsRemoteCertificateRequired``), verified against ``DicomTlsTrustedCertificates``: a
  bundle for the modalities' CA *only*.  Orthanc 1.10 trusts that bundle for every peer and does
  not bind a certificate to an AE title, so any certificate of that CA passes the TLS step; the AE
  title and host checks above still apply.  A plain DICOM association fails its handshake.
- The Orthanc Web Viewer (Debian ``orthanc-webviewer`` 2.8) is loaded with its cache in a directory
  of the PACS's own data, never the package's default ``/tmp/OrthancWebViewerCache``: the cache holds
  decoded images, patient data as sensitive as the storage itself.  Its routes are in the bridge's
  route table and its data routes are judged on their study like any other (bridge/pacs/scopes.py).
- The image store: with a storage KEK file, the plugin's settings name the encrypted storage area
  (bridge/pacs/storage_area.py) over Orthanc's ``StorageDirectory`` (same layout), so every DICOM
  file is written encrypted; Orthanc's index, temporary directory and the viewer cache are not
  covered (docs/encryption.md: put them on an encrypted volume; ``check-config`` looks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.core.mfa import MfaRule
from bridge.pacs.dicomweb import INTERNAL_ROOT
from bridge.pacs.storage_area import SETTINGS_KEY as STORAGE_KEY
from bridge.pacs.storage_area import StorageSettings

#: where Debian's orthanc-python and orthanc-dicomweb put their plugins
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PYTHON_PLUGIN = PLUGIN_DIR / "libOrthancPython.so"
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
WEB_VIEWER_PLUGIN = PLUGIN_DIR / "libOrthancWebViewer.so"
#: the web viewer's cache, below the storage directory unless given (the plugin's own default place)
WEB_VIEWER_CACHE = "WebViewerCache"
#: civetweb's ``ssl_protocol_version``: 4 = TLS 1.2 and later
SSL_MINIMUM_PROTOCOL = 4
#: the Lua script that makes incoming C-FINDs visible to the audit trail (file name in Orthanc's dir)
FIND_AUDIT_LUA = "pacs-bridge-find-audit.lua"
#: Orthanc's Lua ``IncomingFindRequestFilter`` sees every C-FIND (query and origin) before Orthanc's
#: own handler answers it, without replacing that handler (a plugin's find callback would); it
#: returns the query unchanged and prints one line that Orthanc logs ("Lua says: ...") and the
#: plugin's audit shipper reads.  The line names the tags asked, never their values: the log is no
#: place for patient names or IDs.  DumpJson escapes what the peer chose (its AE title).
FIND_AUDIT_SCRIPT = """-- written by pacs-bridge (bridge/deploy/orthanc_config.py): audit of incoming C-FIND requests
function IncomingFindRequestFilter(query, origin)
  local keys = {}
  for tag, _ in pairs(query) do table.insert(keys, tag) end
  table.sort(keys)
  print('pacs-bridge dicom-find ' .. DumpJson({
    RemoteAet = origin['RemoteAet'], RemoteIp = origin['RemoteIp'], CalledAet = origin['CalledAet'],
    Level = query['0008,0052'], Keys = keys }, true))
  return query
end
"""


def write_find_audit_script(directory: Path) -> Path:
    """Write :data:`FIND_AUDIT_SCRIPT` into ``directory``; its path (``lua_scripts`` of :func:`orthanc_config`)."""
    path = directory / FIND_AUDIT_LUA
    path.write_text(FIND_AUDIT_SCRIPT, encoding="utf-8")
    path.chmod(0o644)
    return path


@dataclass(frozen=True)
class DicomTls:
    """Orthanc's DICOM TLS files: its own certificate and key (PEM), and the CA bundle that issues
    the modalities' client certificates (that CA only: every certificate it signs is admitted)."""

    certificate: Path
    private_key: Path
    trusted_certificates: Path


def orthanc_config(
    *,
    name: str,
    aet: str,
    http_port: int,
    dicom_port: int,
    storage_dir: Path,
    index_dir: Path,
    https_certificate: Path,
    dicom_tls: DicomTls,
    with_filter: bool = True,
    modalities: dict[str, Any] | None = None,
    plugin_config_file: Path | None = None,
    python_script: Path | None = None,
    web_viewer: bool = True,
    web_viewer_cache_dir: Path | None = None,
    temporary_dir: Path | None = None,
    lua_scripts: tuple[Path, ...] = (),
    rest_plugin: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Orthanc JSON config.

    `modalities` maps a symbolic name to ``(AET, host, port)`` or to Orthanc's object form (see
    :func:`dicom_modalities`): the only DICOM peers allowed.  `plugin_config_file` is where the
    bridge's plugin reads its settings (``"PacsBridge": {"ConfigFile": ...}``).  `python_script` is
    the plugin bundle's entry (``pacs-bridge plugin bundle OUT``: ``OUT/pacs_bridge_plugin.py``),
    required with the filter.
    `https_certificate` is Orthanc's HTTPS certificate followed by its private key in one PEM file
    (civetweb's form); `dicom_tls` its DICOM TLS files.  Neither has a plain alternative.
    `with_filter=False` gives a plain Orthanc (DICOMweb only, no Python filter) as a benchmark
    baseline.  `web_viewer` loads the Orthanc Web Viewer with its cache in `web_viewer_cache_dir`
    (default: ``<storage_dir>/WebViewerCache``).  `temporary_dir` is Orthanc's ``TemporaryDirectory``
    (uploads, archives being built: patient data; it must exist), default the system's.
    `lua_scripts`: Orthanc's ``LuaScripts`` (the C-FIND audit script, :func:`write_find_audit_script`).
    `rest_plugin`: the bridge plugin's REST helper library (``bridge.deploy.orthanc_rest_plugin``),
    loaded first so the Python plugin finds it initialised; without it the plugin's REST calls hold
    Python's lock (a deadlock hazard, logged at start).
    `extra` is merged last (top-level keys replace).
    """
    plugins = [str(DICOMWEB_PLUGIN)]
    config: dict[str, Any] = {
        "Name": name,
        "DicomAet": aet,
        "StorageDirectory": str(storage_dir),
        "IndexDirectory": str(index_dir),
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": True,
        "SslCertificate": str(https_certificate),
        "SslMinimumProtocolVersion": SSL_MINIMUM_PROTOCOL,
        "SslVerifyPeers": False,  # clients authenticate with tokens (the bridge's filter), not certificates
        "HttpDescribeErrors": False,
        "DicomServerEnabled": True,
        "DicomPort": dicom_port,
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(dicom_tls.certificate),
        "DicomTlsPrivateKey": str(dicom_tls.private_key),
        "DicomTlsTrustedCertificates": str(dicom_tls.trusted_certificates),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {k: v if isinstance(v, dict) else list(v) for k, v in (modalities or {}).items()},
        "DicomModalitiesInDatabase": False,
        "OrthancPeers": {},
        "ExecuteLuaEnabled": False,  # the REST route that runs Lua sent by a client; LuaScripts below are ours
        "LuaScripts": [str(p) for p in lua_scripts],
        # WebDAV (on by default) stores uploads from a background thread, where no token can be
        # checked; the filter already refuses /webdav, and the plugin discards WebDAV-origin instances
        "WebDavEnabled": False,
        # with the filter, the DICOMweb plugin lives at an internal root the filter refuses from outside
        # and the bridge plugin serves /dicom-web/ in front of it, filtering QIDO for scoped tokens
        # (bridge.pacs.dicomweb); a plain Orthanc (no bridge plugin) keeps it at /dicom-web/
        # "Ssl": the DICOMweb plugin writes https:// RetrieveURLs (it cannot tell by itself that Orthanc is HTTPS)
        "DicomWeb": {"Enable": True, "Root": INTERNAL_ROOT if with_filter else "/dicom-web/", "Ssl": True},
        "Plugins": plugins,
    }
    if temporary_dir is not None:
        config["TemporaryDirectory"] = str(temporary_dir)
    if web_viewer:
        plugins.append(str(WEB_VIEWER_PLUGIN))
        cache = web_viewer_cache_dir or storage_dir / WEB_VIEWER_CACHE
        config["WebViewer"] = {"CachePath": str(cache)}
    if with_filter:
        if python_script is None:
            raise ValueError("python_script: the plugin bundle's entry is required with the filter")
        plugins.insert(0, str(PYTHON_PLUGIN))
        if rest_plugin is not None:
            plugins.insert(0, str(rest_plugin))
        config["PythonScript"] = str(python_script)
        config["PythonVerbose"] = False
        if plugin_config_file is not None:
            config["PacsBridge"] = {"ConfigFile": str(plugin_config_file)}
    if extra:
        config.update(extra)
    return config


#: bridge config operation name -> Orthanc's per-modality permission key
_ALLOW_KEYS = {"echo": "AllowEcho", "find": "AllowFind", "get": "AllowGet", "move": "AllowMove",
               "store": "AllowStore"}


def dicom_modalities(pacs: Any) -> dict[str, dict[str, Any]]:
    """Orthanc's ``DicomModalities`` from the bridge config's ``pacs.modalities`` (validated there).

    The object form states every permission explicitly, so an operation left out of ``allow`` is
    refused even if a later Orthanc changes its defaults.  Duck-typed on the section so that this
    module stays importable without pydantic.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, m in pacs.modalities.items():
        entry: dict[str, Any] = {"AET": m.aet, "Host": m.host, "Port": m.port}
        for op, key in _ALLOW_KEYS.items():
            entry[key] = op in m.allow
        entry["AllowStorageCommitment"] = False
        entry["UseDicomTls"] = True  # Orthanc's own associations to it (C-MOVE answers, sends) over TLS too
        out[name] = entry
    return out


def plugin_settings(
    *,
    issuer: str,
    audience: str,
    ca_file: Path | None,
    spool_dir: Path,
    orthanc_log_file: Path | None,
    pacs_name: str,
    audit_url: str | None = None,
    audit_token_file: Path | None = None,
    mfa: Any | None = None,
    gateway_addresses: tuple[str, ...] = (),
    storage_dir: Path | None = None,
    storage_kek_file: Path | None = None,
    storage_create_key: bool = False,
) -> dict[str, Any]:
    """The plugin's JSON config (bridge/pacs/plugin_config.py) for a bridge at ``issuer``.

    ``storage_dir`` + ``storage_kek_file``: the encrypted image store (bridge/pacs/storage_area.py)
    in Orthanc's storage directory, its data keys wrapped by the Orthanc host's storage KEK file;
    ``storage_create_key``: the plugin creates that file at its first start on a store without
    encrypted files (a deployment's first start), never beside encrypted files.

    ``gateway_addresses``: where the bridge's gateway connects from (its workstation header is
    trusted from there only).

    ``mfa`` is the bridge's ``mfa`` section: the PACS must apply the same rule as ``/token``."""
    base = issuer.rstrip("/")
    out: dict[str, Any] = {
        "issuer": issuer,
        "audience": audience,
        "jwks_url": base + "/jwks.json",
        "revocation_url": base + "/revocations",
        "audit_spool_dir": str(spool_dir),
        "pacs_name": pacs_name,
    }
    if ca_file is not None:
        out["ca_file"] = str(ca_file)
    if gateway_addresses:
        out["gateway_addresses"] = list(gateway_addresses)
    if orthanc_log_file is not None:
        out["orthanc_log_file"] = str(orthanc_log_file)
    if audit_url:
        out["audit_url"] = audit_url
    if audit_token_file is not None:
        out["audit_token_file"] = str(audit_token_file)
    if mfa is not None:
        out["mfa"] = MfaRule.from_section(mfa).to_mapping()
    if (storage_dir is None) != (storage_kek_file is None):
        raise ValueError("storage_dir and storage_kek_file go together (the encrypted image store)")
    if storage_dir is not None and storage_kek_file is not None:
        out[STORAGE_KEY] = StorageSettings(str(storage_dir), str(storage_kek_file),
                                           create_key=storage_create_key).to_mapping()
    return out
