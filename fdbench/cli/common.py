"""Options every command shares, and the YAML config mechanism.

Conventions: ``--device auto|cpu|cuda[:N]``, ``--seed``, ``--out DIR``, ``--config FILE.yaml``.
A config file's keys mirror the long option names (``batch-size`` or ``batch_size``); values given
on the command line win over the file, which wins over the defaults.
"""

from __future__ import annotations

from pathlib import Path

import math

import click

from fdbench.config import load_yaml
from fdbench.errors import FdbenchError


def _load_config(ctx: click.Context, param: click.Parameter, value):
    if value is None:
        return None
    data = load_yaml(value)
    names = {p.name for p in ctx.command.params}
    params = {p.name: p for p in ctx.command.params}
    mapped = {}
    for key, val in data.items():
        name = str(key).replace("-", "_")
        if name not in names or name == "config":
            valid = ", ".join(sorted(n.replace("_", "-") for n in names if n != "config"))
            raise click.BadParameter(f"unknown key {key!r} in {value}; valid keys: {valid}", ctx, param)
        _check_yaml_value(key, val, params[name], value, ctx, param)
        mapped[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **mapped}
    return value


def _check_yaml_value(key, val, target: click.Parameter, file, ctx, param) -> None:
    """click converts a YAML value with int()/float(): 16.7 would silently become 16, a list a string."""
    many = getattr(target, "multiple", False) or (target.nargs != 1)
    if isinstance(val, (list, dict)) and not many:
        raise click.BadParameter(
            f"key {key!r} in {file} must be a single value, got a {type(val).__name__}", ctx, param
        )
    if isinstance(target.type, click.types.IntParamType) and not isinstance(val, bool) and isinstance(val, float):
        if not val.is_integer():
            raise click.BadParameter(f"key {key!r} in {file} must be a whole number, got {val}", ctx, param)


def config_option(f):
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML file whose keys mirror these options; command-line values win.",
    )(f)


def device_option(f):
    return click.option(
        "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N."
    )(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def out_option(default: str, help: str = "Output folder."):
    def deco(f):
        return click.option(
            "--out", type=click.Path(file_okay=False, path_type=Path), default=default, show_default=True, help=help
        )(f)

    return deco


def check_range(option: str, value, low=None, high=None) -> None:
    """One-line error (exit 2) for an option outside [low, high]."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (
            f"between {low} and {high}"
            if low is not None and high is not None
            else f"at least {low}"
            if low is not None
            else f"at most {high}"
        )
        raise FdbenchError(f"{option} must be {bounds}, got {value}")


def check_finite(option: str, value: float, *, positive: bool = False) -> None:
    if not math.isfinite(value) or (positive and value <= 0):
        raise FdbenchError(f"{option} must be a finite{' positive' if positive else ''} number, got {value}")


def absolute_data(spec: str | None) -> str | None:
    """A ``--data`` value with its folder made absolute (``DIR`` or ``kind:DIR``).

    Stored in configs and checkpoints, a relative path would mean another folder (or nothing) when
    the checkpoint is evaluated or resumed from elsewhere."""
    if spec is None or str(spec) == "":
        return spec
    kind, sep, rest = str(spec).partition(":")
    if sep and kind in ("cifar10", "cifar100", "stl10"):
        return f"{kind}:{Path(rest).resolve()}"
    return str(Path(spec).resolve())


def echo(message: str) -> None:
    """Status lines go to stderr so stdout stays clean for tables and paths."""
    click.echo(message, err=True)


def sets_option(help: str):
    """``--set SECTION.FIELD=VALUE`` (repeatable) for the commands that take a pretraining recipe."""
    return click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE", help=help)


def severities_option(f):
    return click.option("--severities", default="1-5", show_default=True, help="Severities, e.g. 1-5, 3 or 1,3,5.")(f)


def workers_option(f):
    return click.option("--workers", type=int, default=0, show_default=True, help="Image-decoding worker processes.")(f)


def overwrite_option(f):
    return click.option("--overwrite", is_flag=True, help="Discard results already in --out instead of resuming.")(f)


def open_eval_folder(command: str, checkpoints, out: Path, *, data: Path | None = None, depth: int = 1) -> None:
    """What every evaluation does before its first cell: one-line errors for missing inputs, then the
    lock on ``out`` (one writer per folder; released at exit or when killed) and the removal of the
    temporary files a kill -9 left there (ours to remove once ``out`` is locked)."""
    from fdbench.io import remove_stale_temps
    from fdbench.lock import lock_folder

    for ckpt in checkpoints:
        if not Path(ckpt).exists():
            raise FdbenchError(f"checkpoint not found: {ckpt}")
    if data is not None and not Path(data).is_dir():
        raise FdbenchError(f"data folder not found: {data}")
    lock_folder(out, command)
    remove_stale_temps(out, depth=depth)
