"""What every `pacs-bridge` command group shares: the ``--config`` option and loading the
configuration.

A module of its own so that the areas' command modules (``bridge.<area>.cli``) import it and not
:mod:`bridge.cli`, which imports them to register their groups: no import cycle between
``bridge.cli`` and the areas (an import-linter contract in ``pyproject.toml`` keeps it so).
"""

from __future__ import annotations

import click

from bridge.config import Settings, load_config

CONFIG_ENV = "PACS_BRIDGE_CONFIG"


def config_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--config", "-c", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
        help=f"bridge YAML configuration (or ${CONFIG_ENV})",
    )(f)


def load_settings(path: str | None) -> Settings:
    """Load the configuration; a ConfigError lists every problem (exit 2 via the root group's one
    error handler, :class:`bridge.cli.BridgeGroup`)."""
    return load_config(path)
