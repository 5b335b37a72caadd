"""``fdbench compare``: one report (Markdown + self-contained HTML + CSVs + figures) over several runs."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import config_option, echo, out_option
from fdbench.errors import FdbenchError
from fdbench.io import remove_stale_temps
from fdbench.lock import lock_folder


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--evals",
    "evals",
    multiple=True,
    type=click.Path(path_type=Path),
    help="An eval-corruptions output folder to search first (repeatable) [default: found in or "
    "beside each run: RUN/evals/corruptions, RUN/../evals/corruptions, ./evals/corruptions].",
)
@click.option(
    "--frequency",
    "frequency",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A frequency-analysis output folder to search first (repeatable) [default: found the same "
    "way, .../evals/frequency].",
)
@click.option(
    "--segmentation",
    "segmentation",
    multiple=True,
    type=click.Path(path_type=Path),
    help="An eval-segmentation output folder to search first (repeatable) [default: found the same "
    "way, .../evals/segmentation].",
)
@click.option(
    "--reference",
    default=None,
    help="Run the ratios and CE are relative to [default: the run trained with --curriculum none].",
)
@click.option("--title", default=None, help="Report title.")
@click.option(
    "--figures/--no-figures",
    default=True,
    show_default=True,
    help="Draw the figures (PNG + PDF, embedded in report.html); --no-figures is much faster.",
)
@out_option("reports/compare")
@config_option
def compare(runs, evals, frequency, segmentation, reference, title, figures, out):
    """Compare runs: cost, convergence, robustness and frequency bias in one report.

    \b
    RUNS are run folders of `fdbench pretrain` (a folder of runs such as runs/demo expands to them)
    or checkpoint files (e.g. an official DINOv2 .pth, evaluated with eval-corruptions).
    Writes report.md, a self-contained report.html, summary.json, every table as CSV and the
    figures (PNG + PDF) to --out. Pieces not found are listed as missing.
    """
    from analysis.report import compare as run_compare

    for run in runs:
        if not run.exists():
            raise FdbenchError(f"run not found: {run}")
        if run.is_file() and run.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise FdbenchError(f"{run} is neither a run folder nor a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
        if run.is_file():  # the suffix is not enough: a junk .pt would be reported as a run with no data
            from fdbench.checkpoint import load_backbone

            load_backbone(run)
    lock_folder(out, "compare")  # one writer per --out; released at exit or when killed
    remove_stale_temps(out, depth=1)  # of writes a kill -9 interrupted: ours to remove now that --out is locked
    report = run_compare(
        list(runs),
        out,
        evals=list(evals),
        frequency=list(frequency),
        segmentation=list(segmentation),
        reference=reference,
        title=title,
        figures=figures,
        announce=echo,
    )
    print_headline(report)
    if not report.missing.empty:
        echo(f"{len(report.missing)} missing piece(s) listed in {report.out / 'missing.csv'}")
    echo(f"wrote {len(report.files)} files to {report.out}")
    click.echo(str(report.html))


def print_headline(report) -> None:
    """The headline table on stdout, the findings on stderr."""
    from analysis.report import headline_table

    click.echo(headline_table(report.headline))
    for line in report.findings:
        echo(line.replace("**", ""))
