"""``fdbench make-corruptions`` and ``fdbench corruption-fidelity``."""

from __future__ import annotations

from pathlib import Path

import click
from PIL import UnidentifiedImageError

from fdbench.cli.common import config_option, device_option, echo, seed_option
from fdbench.errors import FdbenchError
from fdbench.io import remove_stale_temps
from fdbench.lock import lock_folder


def parse_severities(text: str) -> tuple[int, ...]:
    """``"1-5"``, ``"3"`` or ``"1,3,5"`` -> sorted unique severities; FdbenchError outside 1-5."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise FdbenchError(f"bad severities {text!r}: use e.g. 1-5, 3 or 1,3,5") from None
    if not out or any(s < 1 or s > 5 for s in out):
        raise FdbenchError(f"severities must be in 1-5, got {text!r}")
    return tuple(sorted(out))


def check_outside_source(src: Path, out: Path) -> None:
    """OUT inside SRC would add a class folder and a manifest to the dataset being read."""
    if not src.exists():
        raise FdbenchError(f"source folder not found: {src}")
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise FdbenchError(
            f"OUT {out} is inside SRC {src}: the corrupted copies would become part of the "
            f"source dataset; choose an OUT outside SRC"
        )


_CORRUPTIONS_HELP = (
    "Corruptions: a subset (all, common, extra, noise, blur, weather, digital) or names, comma-separated."
)


@click.command("make-corruptions")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--corruptions", default="all", show_default=True, help=_CORRUPTIONS_HELP)
@click.option("--severities", default="1-5", show_default=True, help="Severities, e.g. 1-5 or 1,3,5.")
@click.option("--backend", type=click.Choice(["torch", "reference"]), default="torch", show_default=True)
@click.option(
    "--params",
    default="auto",
    show_default=True,
    help="Severity table: auto (by image size), imagenet, tiny-imagenet, cifar10.",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding and encoding workers.")
@click.option("--no-resize", is_flag=True, help="Keep the source size instead of Resize(256) + CenterCrop(224).")
@click.option("--format", "fmt", type=click.Choice(["jpeg", "png"]), default="jpeg", show_default=True)
@click.option("--quality", type=int, default=85, show_default=True, help="JPEG quality.")
@click.option(
    "--preview",
    is_flag=True,
    help="Only write OUT/preview.png (+ .pdf): the first image across all corruptions and severities.",
)
@device_option
@seed_option
@config_option
def make_corruptions(
    src,
    out,
    corruptions,
    severities,
    backend,
    params,
    batch_size,
    workers,
    no_resize,
    fmt,
    quality,
    preview,
    device,
    seed,
):
    """Write an ImageNet-C style dataset OUT/<corruption>/<severity>/<class>/<file> from SRC/<class>/<image>.

    Resumable: files already written (and readable) are skipped. A manifest.csv records every file's
    corruption, severity and seed.
    """
    from corruptions import names
    from corruptions.writer import WriterConfig, write_corruptions, write_preview
    from fdbench.device import resolve_device

    check_outside_source(src, out)
    dev = resolve_device(device)
    if backend == "reference" and dev.type != "cpu":
        dev = resolve_device("cpu")  # numpy only; images come back to CPU anyway
    cfg = WriterConfig(
        corruptions=names(corruptions),
        severities=parse_severities(severities),
        backend=backend,
        device=str(dev),
        batch_size=batch_size,
        workers=workers,
        resize=not no_resize,
        format=fmt,
        quality=quality,
        params=params,
        seed=seed,
    )
    if preview:
        paths = write_preview(src, out, cfg)
        echo(f"preview of {len(cfg.corruptions)} corruptions x {len(cfg.severities)} severities")
        click.echo(str(paths[0]))
        return
    lock_folder(out, "make-corruptions")  # one writer per OUT; released at exit or when killed
    # temp files of writes a kill -9 interrupted: ours to remove only now that OUT is locked
    remove_stale_temps(out, depth=3)  # OUT/<corruption>/<severity>/<class>/
    summary = write_corruptions(src, out, cfg)
    echo(
        f"{summary.images} source images x {len(cfg.corruptions)} corruptions x {len(cfg.severities)} "
        f"severities: wrote {summary.written}, skipped {summary.skipped} already done "
        f"({summary.images_per_second:.1f} img/s on {dev})"
    )
    click.echo(str(summary.manifest))


@click.command("corruption-fidelity")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of natural images [default: scikit-image's astronaut, coffee, chelsea, rocket].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fidelity"),
    show_default=True,
    help="Output folder (fidelity.csv).",
)
@click.option("--count", type=int, default=None, help="Use only the first COUNT images.")
@click.option("--size", type=int, default=224, show_default=True, help="Images are resized and cropped to this.")
@click.option("--corruptions", default="all", show_default=True, help=_CORRUPTIONS_HELP)
@click.option("--severities", default="1-5", show_default=True)
@click.option(
    "--repeats",
    type=int,
    default=6,
    show_default=True,
    help="Random draws per image for random corruptions (a multiple of 6 for frost).",
)
@click.option(
    "--table",
    default="auto",
    show_default=True,
    help="Severity constants both backends use: auto (by --size: cifar10 up to 48 px, tiny-imagenet up to "
    "144, imagenet above), imagenet, tiny-imagenet or cifar10 (the reference package's functions rebuilt "
    "with that table's constants).",
)
@device_option
@seed_option
@config_option
def corruption_fidelity(images, out, count, size, corruptions, severities, repeats, table, device, seed):
    """Compare the torch backend with the reference imagecorruptions package, cell by cell."""
    import pandas as pd

    from corruptions import names
    from corruptions.fidelity import default_images, load_images, write_fidelity
    from fdbench.device import resolve_device

    if size < 32:
        raise FdbenchError(f"--size must be at least 32, got {size}")
    if repeats < 1:
        raise FdbenchError(f"--repeats must be at least 1, got {repeats}")
    if count is not None and count < 1:
        raise FdbenchError(f"--count must be at least 1, got {count}")
    dev = resolve_device(device)
    try:
        imgs = load_images(images, size, count) if images is not None else default_images(size, count)
    except UnidentifiedImageError as err:  # one damaged file in --images: name it
        raise FdbenchError(f"cannot read an image in --images: {err}") from None
    path, frame = write_fidelity(
        out,
        imgs,
        corruptions=names(corruptions),
        severities=parse_severities(severities),
        repeats=repeats,
        seed=seed,
        device=dev,
        table=table,
    )
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 30):
        shown = frame[
            [
                "corruption",
                "severity",
                "table",
                "kind",
                "psnr_db",
                "mean_abs_ratio",
                "spectrum_corr",
                "std_g_ratio",
                "centroid_ratio",
                "spread_passed",
                "passed",
            ]
        ]
        click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    passed = int(frame["passed"].sum())
    echo(
        f"{passed}/{len(frame)} cells pass (PSNR >= 35 dB; random: mean |change| within 10%, "
        f"spectrum correlation >= 0.95, per-channel std and spectral centroid ratios within max(2%, 3 sqrt(2) x "
        f"the reference's draw-to-draw relative standard error)) on {imgs.shape[0]} images; table: {path}"
    )
