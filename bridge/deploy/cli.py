"""`pacs-bridge web` (the web app under granian), `pacs-bridge plugin bundle` (the Orthanc plugin as
one artifact) and `pacs-bridge plugin orthanc-config` (Orthanc's hardened configuration and the
plugin's settings, generated from the bridge YAML).

Both exist so docker-compose.yml and the systemd units run one short command each instead of
repeating a web server command line or a hand-written orthanc.json that drifts from the code.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path

import click

from bridge.cli_common import config_option, load_settings
from bridge.errors import InputError

#: files `orthanc-config` writes into OUT_DIR
ORTHANC_JSON = "orthanc.json"
PLUGIN_JSON = "bridge-plugin.json"



@click.group("plugin")
def plugin_cli() -> None:
    """The bridge's Orthanc plugin."""


@plugin_cli.command("bundle")
@click.argument("out_dir", type=click.Path(file_okay=False))
def bundle_cmd(out_dir: str) -> None:
    """Write the plugin bundle into OUT_DIR: point Orthanc's PythonScript at OUT_DIR/pacs_bridge_plugin.py."""
    from bridge.deploy import plugin_bundle

    manifest = plugin_bundle.build(out_dir)
    click.echo(f"{out_dir}/{plugin_bundle.ENTRY}: bundle {manifest['bundle_version']}, "
               f"token format {manifest['token_format']} ({len(manifest['files'])} files)")  # type: ignore[arg-type]


@plugin_cli.command("civetweb-tls-shim")
@click.argument("out_dir", type=click.Path(file_okay=False))
def civetweb_tls_shim_cmd(out_dir: str) -> None:
    """Build the native libraries Debian bookworm's Orthanc needs into OUT_DIR (needs gcc, libc6-dev
    and orthanc-dev): the two that let it serve HTTPS (run Orthanc with LD_LIBRARY_PATH=OUT_DIR;
    bridge/deploy/civetweb_tls.py says why) and the plugin's REST helper (orthanc-config
    --rest-plugin; bridge/deploy/orthanc_rest_plugin.py says why)."""
    from bridge.deploy import c_build, civetweb_tls, orthanc_rest_plugin

    try:
        civetweb_tls.build(Path(out_dir))
    except c_build.BuildError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{out_dir}: libssl.so, libcrypto.so; start Orthanc with {civetweb_tls.ENV_VAR}={out_dir}")
    try:  # wanted, not required: without it Orthanc starts and the plugin logs the deadlock hazard
        rest = orthanc_rest_plugin.build(Path(out_dir))
    except c_build.BuildError as exc:
        click.echo(f"warning: the plugin's REST helper was not built ({exc}); install orthanc-dev and run "
                   "this again: until then the plugin's REST calls can deadlock Orthanc during a delete",
                   err=True)
        return
    click.echo(f"{rest}: pass it to `pacs-bridge plugin orthanc-config --rest-plugin`")


class WebConfigError(InputError):
    """The web server cannot start as configured (no TLS certificate or key): exit 2."""

    area = "web"

@click.command("web")
@config_option
@click.option("--workers", type=int, default=None, help="web server worker processes (default 2)")
@click.option("--threads", type=int, default=None, help="app threads per worker (default 2)")
@click.option("--metrics-dir", envvar="PROMETHEUS_MULTIPROC_DIR", type=click.Path(file_okay=False),
              default="var/prometheus", show_default=True,
              help="prometheus-client's multiprocess directory (or $PROMETHEUS_MULTIPROC_DIR)")
def web_cli(config_path: str | None, workers: int | None, threads: int | None, metrics_dir: str) -> None:
    """Run the web app under granian (TLS on bridge.listen_host:listen_port); replaces this process."""
    from bridge.deploy.web_server import THREADS, WORKERS, web_argv, web_env

    settings = load_settings(config_path)  # a broken config is reported here, not by every worker
    b = settings.bridge
    try:
        argv = web_argv(f"{b.listen_host}:{b.listen_port}", b.tls_cert_file, b.tls_key_file,
                        workers=workers or WORKERS, threads=threads or THREADS)
    except ValueError as exc:
        raise WebConfigError(str(exc)) from None
    env = dict(os.environ)
    env.update(web_env(Path(config_path).resolve() if config_path else Path(), Path(metrics_dir)))
    if not config_path:  # configuration from the environment alone
        env.pop("PACS_BRIDGE_CONFIG", None)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # noqa: S606 - fixed argv, no shell: the web server becomes the service's process


@click.command("orthanc-config")
@config_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help=f"directory for {ORTHANC_JSON} (start Orthanc with it) and {PLUGIN_JSON}")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False),
              help="where Orthanc finds the plugin bundle (`pacs-bridge plugin bundle`), as Orthanc sees it")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Orthanc's storage, index and the plugin's audit spool")
@click.option("--name", default="orthanc", show_default=True, help="Orthanc's name (audit: the PACS's name)")
@click.option("--aet", default="PACS", show_default=True, help="Orthanc's DICOM AE title")
@click.option("--http-port", type=int, default=8042, show_default=True)
@click.option("--dicom-port", type=int, default=4242, show_default=True)
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None,
              help="CA bundle the plugin verifies the bridge's TLS with")
@click.option("--audit-token-file", type=click.Path(dir_okay=False), default=None,
              help="the bridge's audit.ingest_token as a file Orthanc can read (enables POST /audit/events)")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Orthanc's log file, if it writes one (the plugin audits its own start from it)")
@click.option("--remote-access/--no-remote-access", default=False, show_default=True,
              help="answer HTTP from other hosts (needed in a container; every request still needs a token)")
@click.option("--rest-plugin", type=click.Path(dir_okay=False), default=None,
              help="the plugin's REST helper library as Orthanc sees it (built by `pacs-bridge plugin "
                   "civetweb-tls-shim`); without it the plugin's REST calls can deadlock Orthanc during a delete")
@click.option("--storage-kek-file", type=click.Path(dir_okay=False), default=None,
              help="the Orthanc host's storage KEK file, as Orthanc sees it: every stored file encrypted; the "
                   "plugin creates it at its first start on a store without encrypted files (docs/encryption.md)")
@click.option("--https-certificate", required=True, type=click.Path(dir_okay=False),
              help="Orthanc's HTTPS certificate followed by its private key, one PEM file (HTTPS only)")
@click.option("--dicom-tls-certificate", required=True, type=click.Path(dir_okay=False),
              help="Orthanc's DICOM TLS certificate (PEM)")
@click.option("--dicom-tls-key", required=True, type=click.Path(dir_okay=False),
              help="the private key of --dicom-tls-certificate (PEM)")
@click.option("--modality-ca", required=True, type=click.Path(dir_okay=False),
              help="the CA issuing the modalities' client certificates, and nothing else (DICOM TLS trust)")
@click.option("--gateway-address", "gateway_addresses", multiple=True, metavar="ADDRESS[/PREFIX]",
              help="where the bridge's browser gateway connects from (repeatable): the plugin trusts the "
                   "workstation address the gateway sends from there only (docs/gateway.md)")
def orthanc_config_cli(config_path: str | None, out_dir: str, bundle_dir: str, data_dir: str, name: str, aet: str,
                       http_port: int, dicom_port: int, ca_file: str | None, audit_token_file: str | None,
                       log_file: str | None, remote_access: bool, https_certificate: str,
                       dicom_tls_certificate: str, dicom_tls_key: str, modality_ca: str,
                       storage_kek_file: str | None, rest_plugin: str | None = None,
                       gateway_addresses: tuple[str, ...] = ()) -> None:
    """Write Orthanc's hardened configuration and the plugin's settings from the bridge YAML."""
    from bridge.deploy import plugin_bundle as bundle
    from bridge.deploy.orthanc_config import (
        FIND_AUDIT_LUA,
        DicomTls,
        dicom_modalities,
        orthanc_config,
        plugin_settings,
        write_find_audit_script,
    )

    settings = load_settings(config_path)
    for address in gateway_addresses:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise click.BadParameter(f"{address!r}: an IP address or network expected",
                                     param_hint="--gateway-address") from None
    out, data = Path(out_dir), Path(data_dir)
    issuer = settings.tokens.issuer or settings.bridge.public_url
    audit = {}
    if audit_token_file:
        audit = {"audit_url": issuer.rstrip("/") + "/audit/events", "audit_token_file": Path(audit_token_file)}
    plugin = plugin_settings(
        issuer=issuer, audience=settings.pacs.audience, ca_file=Path(ca_file) if ca_file else None,
        spool_dir=data / "audit-spool", orthanc_log_file=Path(log_file) if log_file else None, pacs_name=name,
        mfa=settings.mfa, gateway_addresses=tuple(gateway_addresses), **audit,
        **({"storage_dir": data / "storage", "storage_kek_file": Path(storage_kek_file), "storage_create_key": True}
           if storage_kek_file else {}),
    )
    config = orthanc_config(
        name=name, aet=aet, http_port=http_port, dicom_port=dicom_port, storage_dir=data / "storage",
        index_dir=data / "index", modalities=dicom_modalities(settings.pacs),
        https_certificate=Path(https_certificate),
        dicom_tls=DicomTls(Path(dicom_tls_certificate), Path(dicom_tls_key), Path(modality_ca)),
        plugin_config_file=out / PLUGIN_JSON, python_script=Path(bundle_dir) / bundle.ENTRY,
        web_viewer_cache_dir=data / "webviewer-cache", lua_scripts=(out / FIND_AUDIT_LUA,),
        rest_plugin=Path(rest_plugin) if rest_plugin else None,
        extra={"RemoteAccessAllowed": True} if remote_access else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_find_audit_script(out)
    (out / PLUGIN_JSON).write_text(json.dumps(plugin, indent=2), encoding="utf-8")
    (out / ORTHANC_JSON).write_text(json.dumps(config, indent=2), encoding="utf-8")
    click.echo(f"{out / ORTHANC_JSON}: Orthanc {name!r} (AET {aet}, HTTPS {http_port}, DICOM TLS {dicom_port}, "
               f"{len(config['DicomModalities'])} modalities); plugin trusts {issuer}")
