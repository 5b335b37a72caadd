"""``fdbench eval-corruptions``: clean and corrupted accuracy, CE / mCE, CSV + JSON exports."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import (
    absolute_data,
    check_range,
    config_option,
    device_option,
    echo,
    open_eval_folder,
    out_option,
    overwrite_option,
    seed_option,
    severities_option,
    workers_option,
)


@click.command("eval-corruptions")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--data",
    default=None,
    help="Dataset root (ImageFolder with train/ and val/, or cifar10:DIR ...) "
    "[default: the checkpoint's training data if recorded and present, else the embedded dataset].",
)
@click.option(
    "--protocol",
    type=click.Choice(["linear", "knn", "both"]),
    default="both",
    show_default=True,
    help="Probe(s) on frozen features: linear classifier, kNN (k=20, T=0.07), or both.",
)
@click.option(
    "--corruptions",
    default="common",
    show_default=True,
    help="common (15), extra (4), all (19), noise|blur|weather|digital, or comma-separated names.",
)
@severities_option
@click.option(
    "--corrupted-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Read pre-generated corrupted images from DIR/<corruption>/<severity>/<class>/ "
    "(e.g. ImageNet-C) instead of corrupting on the fly.",
)
@click.option(
    "--baseline",
    default=None,
    metavar="RESULTS.csv[#CKPT]",
    help="Normalise CE by a previous run's results.csv (default: AlexNet for 1000 classes, "
    "else unnormalised mean error).",
)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--n-last-blocks",
    type=int,
    default=1,
    show_default=True,
    help="Features: class tokens of the last N blocks + patch-token mean (DINOv2 linear eval: 1 or 4).",
)
@workers_option
@overwrite_option
@click.option(
    "--floors/--no-floors",
    default=True,
    show_default=True,
    help="Also evaluate the floors: the probes on raw pixels and on the first checkpoint's "
    "architecture at random initialisation (same images, same corrupted pixels).",
)
@click.option(
    "--ceiling",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A supervised checkpoint written by `fdbench ceiling`, evaluated beside the others with kind 'ceiling'.",
)
@device_option
@seed_option
@out_option("evals/corruptions")
@config_option
def eval_corruptions(
    checkpoints,
    data,
    protocol,
    corruptions,
    severities,
    corrupted_root,
    baseline,
    batch_size,
    n_last_blocks,
    workers,
    overwrite,
    floors,
    ceiling,
    device,
    seed,
    out,
):
    """Accuracy of frozen backbones on clean and corrupted images (linear / kNN probes), CE and mCE.

    Finished (checkpoint, protocol, corruption, severity) cells in --out are kept: re-running the same
    command resumes. Several checkpoints give side-by-side columns.
    """
    from analysis.evaluate import EvalConfig, evaluate_corruptions, format_table

    check_range("--batch-size", batch_size, 1)
    check_range("--n-last-blocks", n_last_blocks, 1)
    check_range("--workers", workers, 0)
    open_eval_folder("eval-corruptions", checkpoints, out)
    config = EvalConfig(
        data=absolute_data(data),
        protocol=protocol,
        corruptions=corruptions,
        severities=severities,
        corrupted_root=str(corrupted_root) if corrupted_root else None,
        baseline=baseline,
        batch_size=batch_size,
        device=device,
        seed=seed,
        n_last_blocks=n_last_blocks,
        workers=workers,
        overwrite=overwrite,
        floors=floors,
        ceiling=str(ceiling) if ceiling else None,
    )
    report = evaluate_corruptions(list(checkpoints), out, config, announce=echo)
    echo(
        f"{report.computed_cells} cell(s) computed, {report.skipped_cells} reused; normalisation: "
        f"{report.normalisation}"
    )
    click.echo(format_table(report.table))
    echo(
        f"wrote {report.files['results']}, {report.files['summary']}, {report.files['summary_json']}, "
        f"{report.files['table']}, {report.files['outcomes']}, {report.files['differences']}"
    )
