"""``fdbench eval-retrieval``: instance retrieval (revisited Oxford/Paris mAP), clean and with corrupted queries."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import (
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


@click.command("eval-retrieval")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with jpg/ and gnd_roxford5k.pkl or gnd_rparis6k.pkl (revisited Oxford/Paris), or a set "
    "written by `make-dataset synthetic-retrieval` [default: the embedded retrieval set].",
)
@click.option("--dataset", default=None, help="Which gnd_<NAME>.pkl/.json when the folder holds several.")
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Longer side of every image, aspect ratio kept [default: the embedded set's size, else 224 as DINO].",
)
@click.option(
    "--multiscale/--single-scale",
    default=False,
    show_default=True,
    help="DINO's multi-scale descriptor: class tokens at scales 1, 1/sqrt2, 1/2 averaged, then L2-normalised.",
)
@click.option(
    "--corruptions",
    default=None,
    help="Also corrupt the queries (the database stays clean): common (15), extra (4), all (19), "
    "noise|blur|weather|digital, or comma-separated names [default: clean only].",
)
@severities_option
@click.option("--batch-size", type=int, default=64, show_default=True)
@workers_option
@overwrite_option
@click.option(
    "--floors/--no-floors",
    default=True,
    show_default=True,
    help="Also evaluate the floors: raw pixels and the first checkpoint's architecture at random init.",
)
@device_option
@seed_option
@out_option("evals/retrieval")
@config_option
def eval_retrieval(
    checkpoints,
    data,
    dataset,
    image_size,
    multiscale,
    corruptions,
    severities,
    batch_size,
    workers,
    overwrite,
    floors,
    device,
    seed,
    out,
):
    """Instance retrieval of frozen backbones: mAP (Easy, Medium, Hard) and mP@1,5,10 of the revisited
    Oxford/Paris protocol, on clean and corrupted queries.

    Finished (checkpoint, corruption, severity) cells in --out are kept: re-running the same command
    resumes.
    """
    from analysis.retrieval import RetrievalConfig, evaluate_retrieval, format_table

    check_range("--batch-size", batch_size, 1)
    check_range("--workers", workers, 0)
    if image_size is not None:
        check_range("--image-size", image_size, 32)
    open_eval_folder("eval-retrieval", checkpoints, out, data=data)
    config = RetrievalConfig(
        data=str(data.resolve()) if data else None,
        dataset=dataset,
        image_size=image_size,
        multiscale=multiscale,
        corruptions=corruptions,
        severities=severities,
        batch_size=batch_size,
        device=device,
        seed=seed,
        overwrite=overwrite,
        floors=floors,
        workers=workers,
    )
    report = evaluate_retrieval(list(checkpoints), out, config, announce=echo)
    echo(f"{report.computed_cells} cell(s) computed, {report.skipped_cells} reused")
    click.echo(format_table(report.table))
    files = report.files
    echo(f"wrote {files['results']}, {files['per_query']}, {files['summary_json']}, {files['table']}")
