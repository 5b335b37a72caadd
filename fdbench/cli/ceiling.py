"""``fdbench ceiling``: the supervised ceiling of a pretraining run's budget."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import check_finite, device_option, echo, out_option, seed_option
from fdbench.io import remove_stale_temps
from fdbench.lock import lock_folder


@click.command("ceiling")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--steps", type=int, default=None, help="Optimiser steps [default: the run's].")
@click.option("--batch-size", type=int, default=None, help="Batch size [default: the run's].")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW peak learning rate.")
@device_option
@seed_option
@out_option("evals/ceiling")
def ceiling(run, steps, batch_size, lr, device, seed, out):
    """Train RUN's architecture with labels (cross-entropy on the CLS token, AdamW) for RUN's number of
    optimiser steps and batch size; write OUT/ceiling.pt for `eval-corruptions --ceiling`."""
    from analysis.ceiling import CeilingConfig, train_ceiling
    from fdbench.errors import FdbenchError

    for name, value in (("--steps", steps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise FdbenchError(f"{name} must be at least 1, got {value}")
    check_finite("--lr", lr, positive=True)
    lock_folder(out, "ceiling")  # one writer per --out; released at exit or when killed
    remove_stale_temps(out)  # of writes a kill -9 interrupted
    path = train_ceiling(
        run, out, CeilingConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device), announce=echo
    )
    echo(
        f"wrote {path} and {out / 'ceiling.json'}; evaluate it with "
        f"`fdbench eval-corruptions {run / 'final.pt'} --ceiling {path}`"
    )
    click.echo(str(path))
