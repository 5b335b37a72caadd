"""``fdbench make-dataset``: write the embedded synthetic dataset (or another built-in one)."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import config_option, echo, seed_option
from fdbench.lock import lock_folder


@click.command("make-dataset")
@click.argument("kind", type=click.Choice(["synthetic", "synthetic-retrieval"]), default="synthetic")
@click.option("--classes", type=int, default=10, show_default=True, help="Number of classes (2-12).")
@click.option("--train-per-class", type=int, default=300, show_default=True)
@click.option("--val-per-class", type=int, default=50, show_default=True)
@click.option(
    "--size", type=int, default=32, show_default=True, help="Image side in pixels (>= 32; the embedded dataset is 32)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder [default: the cache folder every command uses when given no --data].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset at --out.")
@seed_option
@config_option
def make_dataset(kind, classes, train_per_class, val_per_class, size, out, overwrite, seed):
    """Write the embedded synthetic dataset as an ImageFolder (train/ and val/), or with KIND
    synthetic-retrieval the embedded instance-retrieval set (images/ + gnd_synthetic-retrieval.json;
    only --size, --seed, --out and --overwrite apply)."""
    if kind == "synthetic-retrieval":
        return _retrieval(size, seed, out, overwrite)
    from fdbench.synthetic import SyntheticSpec, cache_dir, make_synthetic_dataset

    spec = SyntheticSpec(
        classes=classes, train_per_class=train_per_class, val_per_class=val_per_class, size=size, seed=seed
    )
    out = out or cache_dir() / spec.folder_name()
    existed = (out / "dataset.json").exists()
    # the dataset folder itself is swapped on --overwrite, so the lock is a sibling file
    with lock_folder(out.parent, "make-dataset", name=f".{out.name}.fdbench.lock"):
        path = make_synthetic_dataset(out, spec, overwrite=overwrite)
    n = classes * (train_per_class + val_per_class)
    verb = "kept the existing" if existed and not overwrite else "wrote"
    echo(f"{verb} synthetic dataset: {classes} classes, {n} images of {size} px")
    click.echo(str(path))


def _retrieval(size, seed, out, overwrite):
    from fdbench.synthetic import cache_dir
    from fdbench.synthetic_retrieval import GND_FILE, RetrievalSpec, make_retrieval_dataset

    spec = RetrievalSpec(size=size, seed=seed)
    out = out or cache_dir() / spec.folder_name()
    existed = (out / GND_FILE).exists()
    with lock_folder(out.parent, "make-dataset", name=f".{out.name}.fdbench.lock"):
        path = make_retrieval_dataset(out, spec, overwrite=overwrite)
    verb = "kept the existing" if existed and not overwrite else "wrote"
    echo(f"{verb} retrieval set: {spec.queries} queries of {size} px")
    click.echo(str(path))
