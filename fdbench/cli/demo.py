"""``fdbench demo``: train DINOv2 and FastDINOv2 on the embedded dataset, evaluate, analyse, compare."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import check_range, device_option, echo, out_option, seed_option


@click.command("demo")
@out_option("runs/demo", help="Folder for both runs, their evaluations and the report.")
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Training epochs of each run [default: the preset's].",
)
@device_option
@seed_option
@click.option(
    "--seeds",
    type=int,
    default=1,
    show_default=True,
    help="Runs per curriculum (seeds SEED..SEED+N-1); N > 1 adds out/seeds/report.md with intervals over seeds.",
)
def demo(out: Path, epochs, device, seed, seeds):
    """Train DINOv2 (none) and FastDINOv2 (two-stage), evaluate, analyse, compare.

    \b
    On the embedded dataset: trains both curricula with the same preset (cpu-tiny on a CPU,
    gpu-small with CUDA), evaluates both on all 19 corruptions x 5 severities with a linear and a
    kNN probe, runs the frequency analysis, writes the comparison report and prints the headline
    numbers. Re-running the same command skips finished steps and continues an interrupted one.
    """
    from analysis.report import headline_table
    from fdbench.demo import DemoConfig, demo as run_demo

    check_range("--seeds", seeds, 1)
    result = run_demo(DemoConfig(out=str(out), epochs=epochs, device=device, seed=seed, seeds=seeds), announce=echo)
    ran = [s for s in result.steps if s.status == "done"]
    echo(
        f"[demo] {len(ran)} step(s) run, {len(result.steps) - len(ran)} skipped; total "
        f"{sum(s.seconds for s in result.steps):.0f} s; preset {result.preset} on {result.device}"
    )
    click.echo(headline_table(result.report.headline))
    for line in result.report.findings:
        echo(line.replace("**", ""))
    echo(f"report: {result.report.html}  (also report.md, CSVs and figures in {result.report.out})")
    click.echo(str(result.report.html))
