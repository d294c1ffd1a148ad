"""`pacs-bridge keys rotate-storage` and `pacs-bridge storage init-key|status|encrypt-plaintext`.

Run on the Orthanc host (they need the storage KEK file, which the bridge host never holds), while
Orthanc runs.  The work is :mod:`bridge.pacs.storage_maintenance`, which the Orthanc host can also
run from the plugin bundle with Debian's Python alone (docs/encryption.md).
"""

from __future__ import annotations

import json

import click

from bridge.errors import ExitStatus, InputError


class StorageError(InputError):
    """The encrypted storage's settings or key file are unusable: exit 2."""

    area = "storage"


_PLUGIN_CONFIG = click.option(
    "--plugin-config", "plugin_config", required=True, type=click.Path(dir_okay=False),
    envvar="PACS_BRIDGE_PLUGIN_CONFIG",
    help="the bridge plugin's JSON settings (its 'storage' object names the directory and the KEK file)")


def _run(action: str, plugin_config: str, **kw: object) -> None:
    from bridge.core.envelope import EnvelopeError
    from bridge.pacs import storage_maintenance as sm

    try:
        settings = sm.settings_from_plugin_config(plugin_config)
        if action == "init-key":
            from bridge.core import envelope

            ring = envelope.create_key_file(settings.kek_file)
            report = sm.Report(notes=[f"new storage key file {settings.kek_file} (key {ring.current}); back it up "
                                      "apart from the storage"])
        elif action == "status":
            report = sm.status(settings)
        elif action == "rotate":
            report = sm.rotate(settings, say=lambda m: click.echo(m, err=True), **kw)  # type: ignore[arg-type]
        else:
            report = sm.encrypt_plaintext(settings, say=lambda m: click.echo(m, err=True))
    except (sm.MaintenanceError, EnvelopeError) as exc:
        raise StorageError(str(exc)) from None
    click.echo(json.dumps(report.to_dict(), indent=2))
    if report.problems:
        raise ExitStatus(1)


@click.command("rotate-storage")
@_PLUGIN_CONFIG
@click.option("--grace", type=float, default=5.0, show_default=True,
              help="seconds between switching the current KEK and the last pass (longer than one store)")
@click.option("--force", is_flag=True, help="drop the old KEKs even if files are still under them (listed)")
def rotate_storage_cmd(plugin_config: str, grace: float, force: bool) -> None:
    """Rotate the Orthanc storage KEK: re-wrap every file's data key (bodies untouched), Orthanc running."""
    _run("rotate", plugin_config, grace_seconds=grace, force=force)


@click.group("storage")
def storage_cli() -> None:
    """The encrypted Orthanc image store (run on the Orthanc host)."""


@storage_cli.command("init-key")
@_PLUGIN_CONFIG
def init_key_cmd(plugin_config: str) -> None:
    """Create the storage KEK file named in the plugin's settings (mode 0600; never overwrites)."""
    _run("init-key", plugin_config)


@storage_cli.command("status")
@_PLUGIN_CONFIG
def status_cmd(plugin_config: str) -> None:
    """Files per storage KEK id and plaintext files (reads headers only)."""
    _run("status", plugin_config)


@storage_cli.command("encrypt-plaintext")
@_PLUGIN_CONFIG
def encrypt_plaintext_cmd(plugin_config: str) -> None:
    """Encrypt the plaintext files of Orthanc's own file storage in place, Orthanc running."""
    _run("encrypt-plaintext", plugin_config)
