"""What every `pacs-bridge` command group shares: the ``--config`` option and loading the
configuration.

A module of its own so that the areas' command modules (``bridge.<area>.cli``) import it and not
:mod:`bridge.cli`, which imports them to register their groups: no import cycle between
``bridge.cli`` and the areas (an import-linter contract in ``pyproject.toml`` keeps it so).
"""

from __future__ import annotations

import sys

import click

from bridge.config import ConfigError, Settings, load_config

CONFIG_ENV = "PACS_BRIDGE_CONFIG"


def config_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--config", "-c", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
        help=f"bridge YAML configuration (or ${CONFIG_ENV})",
    )(f)


def load_or_exit(path: str | None) -> Settings:
    """Load the configuration, or print every problem and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
