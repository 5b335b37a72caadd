"""Options every command shares, and the YAML config mechanism.

Conventions: ``--device auto|cpu|cuda[:N]``, ``--seed``, ``--out DIR``, ``--config FILE.yaml``.
A config file's keys mirror the long option names (``batch-size`` or ``batch_size``); values given
on the command line win over the file, which wins over the defaults.
"""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.config import load_yaml


def _load_config(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return None
    data = load_yaml(value)
    names = {p.name for p in ctx.command.params}
    mapped = {}
    for key, val in data.items():
        name = str(key).replace("-", "_")
        if name not in names or name == "config":
            valid = ", ".join(sorted(n.replace("_", "-") for n in names if n != "config"))
            raise click.BadParameter(f"unknown key {key!r} in {value}; valid keys: {valid}", ctx, param)
        mapped[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **mapped}
    return value


def config_option(f):
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_load_config,
                        help="YAML file whose keys mirror these options; command-line values win.")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when present), cpu, cuda or cuda:N.")(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def out_option(default: str, help: str = "Output folder."):
    def deco(f):
        return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=default,
                            show_default=True, help=help)(f)
    return deco


def echo(message: str) -> None:
    """Status lines go to stderr so stdout stays clean for tables and paths."""
    click.echo(message, err=True)
