"""``fdbench export``: a checkpoint's teacher backbone as safetensors + JSON config."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import echo


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output .safetensors file (a .json config is written beside it).",
)
def export(checkpoint, out):
    """Export the (teacher) backbone of a checkpoint to safetensors."""
    from fdbench.checkpoint import export_backbone

    weights, sidecar = export_backbone(checkpoint, out)
    echo(f"exported backbone to {weights} (config: {sidecar})")
    click.echo(str(weights))
