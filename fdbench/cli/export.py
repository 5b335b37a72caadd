"""``fdbench export``: a checkpoint's teacher backbone as safetensors + JSON config (``--format
fdbench``), or as a folder timm loads (``--format timm``: ``fdbench.export_timm``)."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import echo


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="fdbench: the output .safetensors file (a .json config is written beside it); "
    "timm: a folder (model.safetensors, config.json, README.md).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["fdbench", "timm"]),
    default="fdbench",
    show_default=True,
    help="timm: timm's key names and config, for timm.create_model('local-dir:OUT', pretrained=True).",
)
def export(checkpoint, out, fmt):
    """Export the (teacher) backbone of a checkpoint to safetensors (fdbench's or timm's layout)."""
    if fmt == "timm":
        from fdbench.export_timm import export_timm

        folder = export_timm(checkpoint, out)
        echo(f"exported backbone for timm to {folder}: timm.create_model('local-dir:{folder}', pretrained=True)")
        click.echo(str(folder))
        return
    from fdbench.checkpoint import export_backbone
    from fdbench.errors import FdbenchError

    if out.is_dir():
        raise FdbenchError(f"--out {out} is a folder; --format fdbench writes a .safetensors file")
    weights, sidecar = export_backbone(checkpoint, out)
    echo(f"exported backbone to {weights} (config: {sidecar})")
    click.echo(str(weights))
