"""`pacs-bridge keys ...`: list and rotate the PACS token signing keys."""

from __future__ import annotations

import click


@click.group("keys")
def keys_cli() -> None:
    """PACS token signing keys (stored encrypted in the bridge database)."""


def _ring(config_path: str | None):  # type: ignore[no-untyped-def]
    from bridge.cli_common import load_settings
    from bridge.tokens.store import key_ring

    return key_ring(load_settings(config_path))  # SigningKeyError: "keys: ...", exit 2


def _config_option(f):  # type: ignore[no-untyped-def]
    from bridge.cli_common import config_option

    return config_option(f)


@keys_cli.command("list")
@_config_option
def keys_list(config_path: str | None) -> None:
    """Every key: kid, algorithm, state (active / published until ...)."""
    ring = _ring(config_path)
    records = ring.records()
    if not records:
        click.echo("no signing keys yet (the first /token request or `keys rotate` creates one)")
    for r in records:
        state = "active" if r.retired_at is None else f"retired, published until {r.not_after:%Y-%m-%d %H:%M:%S}Z"
        click.echo(f"  {r.kid}  {r.algorithm:6s} created {r.created_at:%Y-%m-%d %H:%M:%S}Z  {state}")


@keys_cli.command("rotate")
@_config_option
@click.option(
    "--algorithm",
    type=click.Choice(["ES256", "RS256", "EdDSA"]),
    default=None,
    help="algorithm of the new key (default: tokens.algorithm)",
)
def keys_rotate(config_path: str | None, algorithm: str | None) -> None:
    """Add a new active key; the old one stays in the JWKS until its last token has expired."""
    from bridge.core.audit_codes import AuditEventType

    ring = _ring(config_path)
    record = ring.rotate(algorithm)
    click.echo(
        f"new active key {record.kid} ({record.algorithm}); older keys published for "
        f"{ring.max_token_lifetime} s more, then dropped"
    )
    try:
        from bridge.audit.store import open_store
        from bridge.cli_common import load_settings
        from bridge.core.audit_events import Actor, AuditEvent

        open_store(load_settings(config_path)).append(
            AuditEvent(
                type=AuditEventType.KEY_ROTATED,
                actor=Actor(client_id="pacs-bridge-cli"),
                details={"kid": record.kid, "algorithm": record.algorithm},
            )
        )
    except Exception as exc:  # the rotation stands; say the audit record is missing
        click.echo(f"keys: rotation done but not audited: {type(exc).__name__}: {exc}", err=True)

