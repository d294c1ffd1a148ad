"""`pacs-bridge plugin ...`: the Orthanc plugin as one artifact."""

from __future__ import annotations

import click


@click.group("plugin")
def plugin_cli() -> None:
    """The bridge's Orthanc plugin."""


@plugin_cli.command("bundle")
@click.argument("out_dir", type=click.Path(file_okay=False))
def bundle_cmd(out_dir: str) -> None:
    """Write the plugin bundle into OUT_DIR: point Orthanc's PythonScript at OUT_DIR/pacs_bridge_plugin.py."""
    from bridge.pacs import bundle

    manifest = bundle.build(out_dir)
    click.echo(f"{out_dir}/{bundle.ENTRY}: bundle {manifest['bundle_version']}, "
               f"token format {manifest['token_format']} ({len(manifest['files'])} files)")  # type: ignore[arg-type]
