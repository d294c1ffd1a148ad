"""`pacs-bridge devstack …` and `pacs-bridge demo …`: the dev stack's commands.

They live with the dev stack (not in the runtime wheel) and reach the `pacs-bridge` command
through the entry point group ``pacs_bridge.commands`` (see devstack/pyproject.toml).
"""

from __future__ import annotations

import json

import click

from bridge.errors import InputError


@click.group()
def devstack() -> None:
    """The real local stack on loopback (Keycloak, Samba AD, OpenLDAP, Orthanc, SCIM, PostgreSQL, rsyslog)."""


@devstack.command("up")
@click.option("--only", multiple=True, help="start only these services (repeatable)")
@click.option("--owner", default="cli", help="who owns the stack (test runs stop only their own)")
def devstack_up(only: tuple[str, ...], owner: str) -> None:
    """Install what is missing, start every service, wait for health, seed the demo data."""
    from pacs_devstack import stack

    stack.up(only or None, owner=owner)  # DevstackError: "devstack: ...", exit 1


@devstack.command("down")
@click.option("--owner", default=None, help="stop only if the stack was started by this owner")
def devstack_down(owner: str | None) -> None:
    """Stop exactly the processes the stack started."""
    from pacs_devstack import stack

    stack.down(owner=owner)


@devstack.command("status")
@click.option("--json", "as_json", is_flag=True)
def devstack_status(as_json: bool) -> None:
    """Which services are running."""
    from pacs_devstack import stack

    st = stack.status()
    if as_json:
        click.echo(json.dumps(st))
        return
    for name, running in st.items():
        click.echo(f"  {name:10s} {'running' if running else 'stopped'}")


@click.group()
def demo() -> None:
    """Helpers for the demo hospital."""


@demo.command("otp")
@click.argument("user")
def demo_otp(user: str) -> None:
    """Print USER's current TOTP code (demo accounts only)."""
    from pacs_devstack import demo_data

    try:
        code = demo_data.current_otp(user)
    except KeyError:
        raise InputError(f"demo otp: no demo account named {user!r}", subject=user) from None
    click.echo(code)
