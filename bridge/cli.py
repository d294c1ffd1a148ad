"""`pacs-bridge`: the command line of the bridge (click).

Each area registers its own command group here; the commands stay thin and call the modules
that do the work, so everything a command does can also be tested without the CLI.

Errors: commands raise the project's errors (bridge/errors.py) and :class:`BridgeGroup` turns
each into its message on stderr and its exit code, in this one place.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import click

from bridge.cli_common import load_settings
from bridge.config import plaintext_warnings, summary
from bridge.errors import BridgeError


class BridgeGroup(click.Group):
    """The command tree's one error handler: a :class:`~bridge.errors.BridgeError` raised by any
    command below becomes its message on stderr and its exit code.  Other exceptions are bugs and
    keep their traceback; click's own usage errors keep click's handling (exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BridgeError as exc:
            message = exc.cli_message()
            if message:
                click.echo(message, err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=BridgeGroup)
@click.version_option(package_name="pacs-sso-bridge")
def main() -> None:
    """PACS SSO Bridge: directory groups to Keycloak roles and MFA-enforced PACS tokens."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--orthanc-config", "orthanc_config", type=click.Path(dir_okay=False), default=None,
              help="also check Orthanc's orthanc.json: is its index, temporary directory and viewer cache on an "
                   "encrypted volume, is its image store encrypted (docs/encryption.md)")
def check_config(path: str, orthanc_config: str | None) -> None:
    """Validate PATH; list every error with its key path (exit 2), or print a summary (exit 0)."""
    settings = load_settings(path)
    click.echo(f"{path}: OK")
    rows = summary(settings)
    width = max(len(k) for k, _ in rows)
    for key, line in rows:
        click.echo(f"  {key.ljust(width)}  {line}")
    for warning in plaintext_warnings(settings):
        click.echo(f"WARNING: {warning}")
    if orthanc_config:
        _check_orthanc_volumes(orthanc_config)


def _check_orthanc_volumes(path: str) -> None:
    """One line per Orthanc path holding patient data outside the encrypted storage area, and a
    WARNING for each that is not on an encrypted block device (or memory)."""
    import json
    from pathlib import Path

    from bridge.deploy.volumes import ENCRYPTED, MEMORY, check_orthanc
    from bridge.errors import InputError
    from bridge.pacs.orthanc_plugin import storage_settings
    from bridge.pacs.storage_area import StorageSettings

    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read Orthanc's configuration ({exc})", subject=path) from None
    storage = storage_settings(config if isinstance(config, dict) else {})
    encrypted = isinstance(storage, StorageSettings)
    click.echo(f"{path}: Orthanc image store "
               + (f"encrypted by the plugin ({storage.directory})" if encrypted else "NOT encrypted by the plugin"))
    if isinstance(storage, str):
        click.echo(f"WARNING: the plugin's storage settings are unusable: {storage}")
    for check in check_orthanc(config, encrypted_storage=encrypted):
        vol = check.volume
        click.echo(f"  {check.role}: {vol.path or '-'}: {vol.state} ({vol.detail})")
        if vol.state not in (ENCRYPTED, MEMORY):
            click.echo(f"WARNING: {check.role} {vol.path or ''} is not on an encrypted block device "
                       f"({check.note}); see docs/encryption.md")


def _register_areas() -> None:
    """Command groups owned by other modules (imported lazily inside each command)."""
    from bridge.policy.cli import policy_cli
    from bridge.tokens.cli import keys_cli

    main.add_command(policy_cli)
    from bridge.sync.cli import serve_cli, sync_cli

    main.add_command(sync_cli)
    main.add_command(serve_cli)
    main.add_command(keys_cli)
    from bridge.kek_rotation import rewrap_command

    keys_cli.add_command(rewrap_command())
    from bridge.audit.cli import audit_cli
    from bridge.store.cli import db_cli

    main.add_command(audit_cli)
    main.add_command(db_cli)
    from bridge.deploy.cli import orthanc_config_cli, plugin_cli, web_cli

    main.add_command(plugin_cli)
    from bridge.review.cli import review_cli

    main.add_command(review_cli)
    main.add_command(web_cli)
    plugin_cli.add_command(orthanc_config_cli)
    from bridge.compliance.cli import compliance_cli

    main.add_command(compliance_cli)
    from bridge.deploy.storage_cli import rotate_storage_cmd, storage_cli

    keys_cli.add_command(rotate_storage_cmd)
    main.add_command(storage_cli)
    _register_plugins()


def _register_plugins() -> None:
    """Command groups of other installed distributions (entry point group ``pacs_bridge.commands``).

    This is how the dev stack (``devstack/``, its own distribution, installed by ``make install``
    but never in the runtime wheel) adds ``pacs-bridge devstack`` and ``pacs-bridge demo`` without
    the runtime importing it."""
    for ep in entry_points(group="pacs_bridge.commands"):
        main.add_command(ep.load(), ep.name)


_register_areas()


if __name__ == "__main__":  # pragma: no cover
    main()
