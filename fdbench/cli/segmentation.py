"""``fdbench eval-segmentation``: DINOv2's linear segmentation probe (mIoU), clean and corrupted."""

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
from fdbench.errors import FdbenchError


@click.command("eval-segmentation")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="ADE20K (holding ADEChallengeData2016/), Pascal VOC 2012 (VOC2012/ or VOCdevkit/VOC2012/) or an "
    "embedded synthetic dataset folder [default: the embedded dataset].",
)
@click.option(
    "--dataset",
    type=click.Choice(["auto", "ade20k", "voc", "embedded"]),
    default="auto",
    show_default=True,
    help="The folder's layout (auto: from the folder).",
)
@click.option(
    "--size",
    type=int,
    default=None,
    help="Square evaluation size in px (shorter side resized, centre crop; rounded down to the patch size) "
    "[default: the embedded dataset's 32, else 448].",
)
@click.option(
    "--corruptions",
    default="common",
    show_default=True,
    help="none (clean only), common (15), extra (4), all (19), noise|blur|weather|digital, or names.",
)
@severities_option
@click.option(
    "--include-geometric",
    is_flag=True,
    help="Also score elastic_transform and zoom_blur (they move pixels) against the unwarped labels.",
)
@click.option(
    "--n-last-blocks",
    type=int,
    default=1,
    show_default=True,
    help="Patch tokens of the last N blocks, concatenated (DINOv2: 1 = linear, 4 = multi-layer).",
)
@click.option("--epochs", type=int, default=10, show_default=True, help="Passes of the head over the train maps.")
@click.option("--max-train-images", type=int, default=None, help="Use only the first N train images.")
@click.option("--max-val-images", type=int, default=None, help="Use only the first N val images.")
@click.option(
    "--max-cache-gb", type=float, default=8.0, show_default=True, help="Memory allowed for the train patch maps."
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per encoder batch.")
@workers_option
@click.option(
    "--floors/--no-floors",
    default=True,
    show_default=True,
    help="Also evaluate the first checkpoint's architecture at random initialisation.",
)
@overwrite_option
@device_option
@seed_option
@out_option("evals/segmentation")
@config_option
def eval_segmentation(
    checkpoints,
    data,
    dataset,
    size,
    corruptions,
    severities,
    include_geometric,
    n_last_blocks,
    epochs,
    max_train_images,
    max_val_images,
    max_cache_gb,
    batch_size,
    workers,
    floors,
    overwrite,
    device,
    seed,
    out,
):
    """mIoU of a linear head on frozen patch tokens (DINOv2's linear probe), clean and corrupted.

    Finished (checkpoint, corruption, severity) cells in --out are kept: re-running the same command
    resumes. Several checkpoints give side-by-side rows, with the random-init floor beside them.
    """
    from analysis.segmentation import SegConfig, evaluate_segmentation
    from analysis.segmentation_probe import HeadConfig

    check_range("--epochs", epochs, 1)
    check_range("--batch-size", batch_size, 1)
    check_range("--n-last-blocks", n_last_blocks, 1)
    check_range("--workers", workers, 0)
    for option, value in (
        ("--size", size),
        ("--max-train-images", max_train_images),
        ("--max-val-images", max_val_images),
    ):
        if value is not None:
            check_range(option, value, 1)
    if not max_cache_gb > 0:
        raise FdbenchError(f"--max-cache-gb must be positive, got {max_cache_gb:g}")
    open_eval_folder("eval-segmentation", checkpoints, out, data=data, depth=2)
    config = SegConfig(
        data=str(data.resolve()) if data else None,
        dataset=dataset,
        size=size,
        corruptions=corruptions,
        severities=severities,
        include_geometric=include_geometric,
        n_last_blocks=n_last_blocks,
        head=HeadConfig(epochs=epochs),
        max_train_images=max_train_images,
        max_val_images=max_val_images,
        max_cache_gb=max_cache_gb,
        batch_size=batch_size,
        workers=workers,
        device=device,
        seed=seed,
        floors=floors,
        overwrite=overwrite,
    )
    report = evaluate_segmentation(list(checkpoints), out, config, announce=echo)
    echo(f"{report.computed_cells} cell(s) computed, {report.skipped_cells} reused")
    click.echo(format_summary(report.summary))
    echo(f"wrote {', '.join(str(p) for p in report.files.values())}")


def format_summary(summary) -> str:
    """The printed table: mIoU and pixel accuracy (%) per checkpoint, clean and mean corrupted."""
    lines = [f"{'checkpoint':<24} {'kind':<10} {'clean mIoU':>10} {'pixel acc':>9} {'corr. mIoU':>10} {'cells':>5}"]
    for row in summary.to_dict("records"):
        lines.append(
            f"{row['checkpoint'][:24]:<24} {row['kind']:<10} {row['clean_miou']:>10.1f} {row['clean_pixel_acc']:>9.1f} "
            f"{row['corrupted_miou']:>10.1f} {row['corrupted_cells']:>5}"
        )
    return "\n".join(lines)
