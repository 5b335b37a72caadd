"""``fdbench compare``: one report (Markdown + self-contained HTML + CSVs + figures) over several runs."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import config_option, echo, out_option


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--evals", "evals", multiple=True, type=click.Path(path_type=Path),
              help="An eval-corruptions output folder to search first (repeatable) [default: found in or "
                   "beside each run: RUN/evals/corruptions, RUN/../evals/corruptions, ./evals/corruptions].")
@click.option("--frequency", "frequency", multiple=True, type=click.Path(path_type=Path),
              help="A frequency-analysis output folder to search first (repeatable) [default: found the same "
                   "way, .../evals/frequency].")
@click.option("--reference", default=None,
              help="Run the ratios and CE are relative to [default: the run trained with --curriculum none].")
@click.option("--title", default=None, help="Report title.")
@out_option("reports/compare")
@config_option
def compare(runs, evals, frequency, reference, title, out):
    """Compare runs: cost, convergence, robustness and frequency bias in one report.

    \b
    RUNS are run folders of `fdbench pretrain` (a folder of runs such as runs/demo expands to them)
    or checkpoint files (e.g. an official DINOv2 .pth, evaluated with eval-corruptions).
    Writes report.md, a self-contained report.html, summary.json, every table as CSV and the
    figures (PNG + PDF) to --out. Pieces not found are listed as missing.
    """
    from analysis.report import compare as run_compare

    report = run_compare(list(runs), out, evals=list(evals), frequency=list(frequency), reference=reference,
                         title=title, announce=echo)
    print_headline(report)
    if not report.missing.empty:
        echo(f"{len(report.missing)} missing piece(s) listed in {report.out / 'missing.csv'}")
    echo(f"wrote {len(report.files)} files to {report.out}")
    click.echo(str(report.html))


HEADLINE_ROWS = [
    ("training wall-clock (s)", "wall_clock_s", "{:.1f}"),
    ("speed-up vs reference", "speedup_vs_ref", "{:.2f}x"),
    ("training TFLOPs", "total_tflops", "{:.3g}"),
    ("FLOPs ratio vs reference", "flops_ratio_vs_ref", "{:.2f}x"),
    ("final online kNN top-1 (%)", "final_knn_top1_pct", "{:.1f}"),
    ("clean top-1, linear (%)", "linear_clean_top1_pct", "{:.1f}"),
    ("clean top-1, kNN (%)", "knn_clean_top1_pct", "{:.1f}"),
    ("mean corruption error, linear (%)", "linear_mean_corruption_error_pct", "{:.1f}"),
    ("mean corruption error, kNN (%)", "knn_mean_corruption_error_pct", "{:.1f}"),
    ("mCE vs reference, linear (%)", "linear_mCE_vs_ref_pct", "{:.1f}"),
    ("mCE vs reference, kNN (%)", "knn_mCE_vs_ref_pct", "{:.1f}"),
    ("noise-group top-1, linear (%)", "linear_noise_top1_pct", "{:.1f}"),
    ("blur-group top-1, linear (%)", "linear_blur_top1_pct", "{:.1f}"),
    ("heat-map mean error (%)", "heatmap_mean_error_pct", "{:.1f}"),
    ("heat-map centroid (x Nyquist)", "heatmap_centroid_frac", "{:.3f}"),
    ("band-pass crossing (x Nyquist)", "crossing_frac", "{:.3f}"),
    ("noise minus blur (pp)", "noise_minus_blur_pp", "{:+.1f}"),
]


def headline_table(headline: dict) -> str:
    """The headline numbers as a plain-text table: one row per quantity, one column per run."""
    import math

    runs = list(headline)
    rows = []
    for title, key, fmt in HEADLINE_ROWS:
        values = [headline[r].get(key) for r in runs]
        cells = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v) for v in values]
        rows.append([title, *cells])
    widths = [max(len(str(x)) for x in col) for col in zip(["", *runs], *rows)]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [["", *runs], *rows]]
    return "\n".join(lines)


def print_headline(report) -> None:
    click.echo(headline_table(report.headline))
    for line in report.findings:
        echo(line.replace("**", ""))
