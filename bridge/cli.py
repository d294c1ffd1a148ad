"""`pacs-bridge`: the command line of the bridge (click).

Each area registers its own command group here; the commands stay thin and call the modules
that do the work, so everything a command does can also be tested without the CLI.

Errors: commands raise the project's errors (bridge/errors.py) and :class:`BridgeGroup` turns
each into its message on stderr and its exit code, in this one place.
"""

from __future__ import annotations

import json
from typing import Any

import click

from bridge.cli_common import load_settings
from bridge.config import summary
from bridge.errors import BridgeError, InputError


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
def check_config(path: str) -> None:
    """Validate PATH; list every error with its key path (exit 2), or print a summary (exit 0)."""
    settings = load_settings(path)
    click.echo(f"{path}: OK")
    rows = summary(settings)
    width = max(len(k) for k, _ in rows)
    for key, line in rows:
        click.echo(f"  {key.ljust(width)}  {line}")


@main.group()
def devstack() -> None:
    """The real local stack on loopback (Keycloak, Samba AD, OpenLDAP, Orthanc, SCIM, PostgreSQL, rsyslog)."""


@devstack.command("up")
@click.option("--only", multiple=True, help="start only these services (repeatable)")
@click.option("--owner", default="cli", help="who owns the stack (test runs stop only their own)")
def devstack_up(only: tuple[str, ...], owner: str) -> None:
    """Install what is missing, start every service, wait for health, seed the demo data."""
    from bridge.devstack import stack

    stack.up(only or None, owner=owner)  # DevstackError: "devstack: ...", exit 1


@devstack.command("down")
@click.option("--owner", default=None, help="stop only if the stack was started by this owner")
def devstack_down(owner: str | None) -> None:
    """Stop exactly the processes the stack started."""
    from bridge.devstack import stack

    stack.down(owner=owner)


@devstack.command("status")
@click.option("--json", "as_json", is_flag=True)
def devstack_status(as_json: bool) -> None:
    """Which services are running."""
    from bridge.devstack import stack

    st = stack.status()
    if as_json:
        click.echo(json.dumps(st))
        return
    for name, running in st.items():
        click.echo(f"  {name:10s} {'running' if running else 'stopped'}")


@main.group()
def demo() -> None:
    """Helpers for the demo hospital."""


@demo.command("otp")
@click.argument("user")
def demo_otp(user: str) -> None:
    """Print USER's current TOTP code (demo accounts only)."""
    from bridge.devstack import demo_data

    try:
        code = demo_data.current_otp(user)
    except KeyError:
        raise InputError(f"demo otp: no demo account named {user!r}", subject=user) from None
    click.echo(code)


def _register_areas() -> None:
    """Command groups owned by other modules (imported lazily inside each command)."""
    from bridge.policy.cli import policy_cli
    from bridge.tokens.cli import keys_cli

    main.add_command(policy_cli)
    from bridge.sync.cli import serve_cli, sync_cli

    main.add_command(sync_cli)
    main.add_command(serve_cli)
    main.add_command(keys_cli)
    from bridge.audit.cli import audit_cli
    from bridge.store.cli import db_cli

    main.add_command(audit_cli)
    main.add_command(db_cli)
    from bridge.pacs.cli import plugin_cli

    main.add_command(plugin_cli)
    from bridge.deploy.cli import orthanc_config_cli, web_cli

    main.add_command(web_cli)
    plugin_cli.add_command(orthanc_config_cli)


_register_areas()


if __name__ == "__main__":  # pragma: no cover
    main()
