"""``fdbench frequency-analysis``: Fourier heat maps, band-pass accuracy and corruption spectra."""

from __future__ import annotations

import click

from fdbench.cli.common import (
    absolute_data,
    check_finite,
    check_range,
    config_option,
    device_option,
    echo,
    out_option,
    seed_option,
)
from fdbench.io import remove_stale_temps
from fdbench.lock import lock_folder


@click.command("frequency-analysis")
@click.argument("checkpoints", nargs=-1)
@click.option("--data", default=None, help="Dataset root (default: the data each checkpoint was trained on).")
@click.option(
    "--analyses",
    default="heatmap,bandpass,spectra",
    show_default=True,
    help="Comma-separated subset of heatmap, bandpass, spectra.",
)
@click.option(
    "--eps",
    type=float,
    default=None,
    help="Fourier perturbation L2 norm per channel [default: 4.0 at 32 px, 15.7 at 224 px, linear in between].",
)
@click.option(
    "--window",
    type=int,
    default=None,
    help="Heat-map window width in frequencies, centred on 0 [default: whole spectrum up to 64 px, else 63].",
)
@click.option(
    "--n-images",
    type=int,
    default=400,
    show_default=True,
    help="Validation images per heat-map frequency (class-balanced); 400 keeps the ring curve's 95% "
    "interval near +-3 points.",
)
@click.option(
    "--spectra-images", type=int, default=32, show_default=True, help="Validation images for the corruption spectra."
)
@click.option(
    "--bandpass-images", type=int, default=256, show_default=True, help="Validation images for the band-pass curves."
)
@click.option(
    "--radii",
    type=int,
    default=16,
    show_default=True,
    help="Band-pass radius steps between 0 and Nyquist (the corner is added).",
)
@click.option(
    "--probe",
    type=click.Choice(["linear", "knn"]),
    default="linear",
    show_default=True,
    help="Classifier on frozen features, fitted on clean training images.",
)
@click.option(
    "--results",
    default=None,
    help="results.csv of `fdbench eval-corruptions` (default: evals/corruptions/results.csv when "
    "present): adds the robustness-vs-frequency plot and the noise/blur numbers.",
)
@click.option("--severity", type=int, default=3, show_default=True, help="Severity drawn in the spectra figure.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward pass.")
@click.option(
    "--runs", default="runs", show_default=True, help="Where to look for runs/*/final.pt when no checkpoint is given."
)
@click.option(
    "--overwrite", is_flag=True, help="Recompute results --out holds with other settings instead of refusing."
)
@device_option
@seed_option
@out_option("evals/frequency")
@config_option
def frequency_analysis(
    checkpoints,
    data,
    analyses,
    eps,
    window,
    n_images,
    spectra_images,
    bandpass_images,
    radii,
    probe,
    results,
    severity,
    batch_size,
    runs,
    overwrite,
    device,
    seed,
    out,
):
    """Fourier heat maps, low/high-pass accuracy and corruption spectra of checkpoints.

    With no CHECKPOINTS, analyses runs/*/final.pt. Writes one CSV per analysis and checkpoint,
    summary.csv and figures (PNG + PDF) to --out; finished analyses are reused on a re-run.
    """
    from analysis.frequency import FrequencyConfig, run_frequency_analysis

    if eps is not None:
        check_finite("--eps", eps, positive=True)
    if window is not None:
        check_range("--window", window, 1)
    for name, value in (
        ("--n-images", n_images),
        ("--spectra-images", spectra_images),
        ("--bandpass-images", bandpass_images),
        ("--radii", radii),
        ("--batch-size", batch_size),
    ):
        check_range(name, value, 1)
    check_range("--severity", severity, 1, 5)
    lock_folder(out, "frequency-analysis")  # one writer per --out; released at exit or when killed
    remove_stale_temps(out, depth=1)  # of writes a kill -9 interrupted: ours to remove now that --out is locked
    config = FrequencyConfig(
        checkpoints=list(checkpoints),
        data=absolute_data(data),
        analyses=[a.strip() for a in analyses.split(",") if a.strip()],
        eps=eps,
        window=window,
        n_images=n_images,
        spectra_images=spectra_images,
        bandpass_images=bandpass_images,
        radii=radii,
        probe=probe,
        results=results,
        severity=severity,
        batch_size=batch_size,
        device=device,
        seed=seed,
        out=str(out),
        runs=runs,
        overwrite=overwrite,
    )
    report = run_frequency_analysis(config, announce=echo)
    if not report.summary.empty:
        cols = [
            c
            for c in (
                "checkpoint",
                "clean_top1_pct",
                "heatmap_mean_error_pct",
                "heatmap_centroid_frac",
                "crossing_frac",
                "noise_minus_blur_pp",
            )
            if c in report.summary.columns
        ]
        click.echo(report.summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    echo(f"wrote {len(report.files)} files to {report.out} (summary.csv, CSVs, PNG + PDF figures)")
