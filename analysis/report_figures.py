"""Figures of the ``compare`` report that the frequency analysis does not already draw.

Each function takes the DataFrame that :mod:`analysis.report` also writes as CSV (so the figure shows
exactly the CSV's numbers) and returns a :class:`matplotlib.figure.Figure`; the report saves it as
PNG + PDF with :func:`analysis.plots.save_figure`. Colours come from
:func:`analysis.plots.checkpoint_colors`, one colour per run in every figure of the report.

- :func:`cost_figure`: wall-clock per stage (stacked) and total training FLOPs per run;
- :func:`convergence_figure`: kNN top-1 against epochs and against training wall-clock;
- :func:`loss_figure`: total / DINO / iBOT / KoLeo loss against epochs;
- :func:`corruption_bars_figure`: mean accuracy over severities for every corruption, one bar per run;
- :func:`severity_figure`: accuracy against severity (0 = clean), one panel per corruption group.

Stage switches (the epoch and the wall-clock second where a run's stage 2 starts) are drawn as
dotted vertical lines in the run's colour.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import checkpoint_colors, new_figure

__all__ = [
    "cost_figure",
    "convergence_figure",
    "loss_figure",
    "corruption_bars_figure",
    "severity_figure",
    "PROTOCOL_STYLE",
]

PROTOCOL_STYLE = {"linear": "-", "knn": "--"}  # line style per probe in severity plots
LOSS_TERMS = (("loss", "total loss"), ("dino", "DINO loss"), ("ibot", "iBOT loss"), ("koleo", "KoLeo loss"))


def _labels(df: pd.DataFrame, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(df["run"].astype(str))) if len(df) else []
    return [l for l in order if l in present] if order is not None else present


def _mark_switches(ax, switches: pd.DataFrame | None, column: str, colors: dict[str, str]) -> None:
    """Dotted vertical line at each run's stage switch (``switches``: run, epoch, wall_clock_s)."""
    if switches is None or switches.empty:
        return
    for row in switches.itertuples():
        value = getattr(row, column)
        if row.run in colors and value is not None and np.isfinite(value):
            ax.axvline(value, color=colors[row.run], linestyle=":", linewidth=1.2)


def _switch_legend(ax, switches: pd.DataFrame | None) -> None:
    if switches is not None and not switches.empty:
        ax.plot([], [], color="0.4", linestyle=":", label="stage switch")


def cost_figure(stages: pd.DataFrame, totals: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Left: training wall-clock per run, stacked by stage. Right: total training FLOPs per run.

    ``stages`` columns: ``run, stage, wall_clock_s``; ``totals`` columns: ``run, total_tflops``.
    """
    fig, axes = new_figure(1, 2, width=4.4, height=3.4)
    runs = _labels(stages, order)
    colors = checkpoint_colors(order or runs)
    ax = axes[0, 0]
    hatches = ("", "//", "..", "xx", "\\\\")
    names = list(dict.fromkeys(stages["stage"])) if len(stages) else []
    hatch_of = {name: hatches[i % len(hatches)] for i, name in enumerate(names)}
    top = 0.0
    for x, run in enumerate(runs):
        bottom = 0.0
        # each run's stages stacked in training order (stage 1 at the bottom)
        for row in stages[stages["run"] == run].itertuples():
            value = float(row.wall_clock_s) if pd.notna(row.wall_clock_s) else 0.0
            ax.bar(x, value, bottom=bottom, color=colors[run], edgecolor="white", hatch=hatch_of[row.stage])
            bottom += value
        top = max(top, bottom)
    for name in names:
        ax.bar([0], [0], color="0.75", edgecolor="white", hatch=hatch_of[name], label=f"stage: {name}")
    ax.set_ylim(0, top * 1.3 if top > 0 else 1)
    ax.set_xticks(range(len(runs)), runs)
    ax.set_ylabel("training wall-clock (s)")
    ax.set_title("Wall-clock per stage")
    if names:
        ax.legend(frameon=False, loc="upper left", ncol=2)
    ax = axes[0, 1]
    tot = totals.set_index("run") if len(totals) else totals
    truns = [r for r in (order or list(tot.index)) if r in tot.index and pd.notna(tot.loc[r, "total_tflops"])]
    ax.bar(
        range(len(truns)),
        [float(tot.loc[r, "total_tflops"]) for r in truns],
        color=[colors.get(r, "0.5") for r in truns],
    )
    ax.set_xticks(range(len(truns)), truns)
    ax.set_ylabel("training FLOPs (TFLOPs)")
    ax.set_title("Total training FLOPs (counted)")
    return fig


def convergence_figure(
    knn: pd.DataFrame, switches: pd.DataFrame | None = None, order: Sequence[str] | None = None
) -> Figure:
    """kNN top-1 (%) against epochs completed (left) and training wall-clock (right).

    ``knn`` columns: ``run, epoch, wall_clock_s, knn_top1_pct``; ``switches``: ``run, epoch, wall_clock_s``.
    """
    fig, axes = new_figure(1, 2, width=4.4, height=3.4)
    runs = _labels(knn, order)
    colors = checkpoint_colors(order or runs)
    for ax, column, xlabel in (
        (axes[0, 0], "epoch", "epochs completed"),
        (axes[0, 1], "wall_clock_s", "training wall-clock (s)"),
    ):
        for run in runs:
            part = knn[knn["run"] == run].sort_values(column)
            ax.plot(part[column], part["knn_top1_pct"], marker="o", markersize=3, color=colors[run], label=run)
            if {"knn_top1_lo_pct", "knn_top1_hi_pct"} <= set(part.columns) and part["knn_top1_lo_pct"].notna().any():
                ax.fill_between(
                    part[column], part["knn_top1_lo_pct"], part["knn_top1_hi_pct"], color=colors[run], alpha=0.18
                )
        _mark_switches(ax, switches, column, colors)
        _switch_legend(ax, switches)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("kNN top-1 accuracy (%)")
        ax.set_xlim(left=0)
        # the whole accuracy scale: a zoomed axis makes one or two points of noise look like a trend
        ax.set_ylim(0, 100)
    axes[0, 0].set_title("Online kNN accuracy vs epochs")
    axes[0, 1].set_title("Online kNN accuracy vs wall-clock")
    handles, names = axes[0, 0].get_legend_handles_labels()
    # below the panels, never over the curves; bands: 95% Wilson interval over the val images
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncol=max(1, len(names)),
        frameon=False,
        fontsize=8,
        title="shaded: 95% interval over the val images",
        title_fontsize=7,
    )
    return fig


def loss_figure(
    losses: pd.DataFrame, switches: pd.DataFrame | None = None, order: Sequence[str] | None = None
) -> Figure:
    """Training losses against epochs (fractional), one panel per loss term present.

    ``losses`` columns: ``run, epoch`` and any of ``loss, dino, ibot, koleo``.
    """
    terms = [(c, t) for c, t in LOSS_TERMS if c in losses.columns and losses[c].notna().any()]
    fig, axes = new_figure(1, max(1, len(terms)), width=3.3, height=3.0)
    runs = _labels(losses, order)
    colors = checkpoint_colors(order or runs)
    for ax, (column, title) in zip(axes[0], terms):
        for run in runs:
            part = losses[losses["run"] == run].sort_values("epoch")
            ax.plot(part["epoch"], part[column], color=colors[run], linewidth=1.0, label=run)
        _mark_switches(ax, switches, "epoch", colors)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (nats)")
    if terms:
        _switch_legend(axes[0, 0], switches)
        axes[0, 0].legend(frameon=False)
    return fig


TEACHER_SIGNALS = (
    ("teacher_entropy", "per-image target entropy", "entropy (fraction of ln K)"),
    ("teacher_batch_entropy", "entropy of the batch's mean target", "entropy (fraction of ln K)"),
    ("teacher_prototypes", "distinct top prototypes per batch", "prototypes (count, log scale)"),
)


def teacher_figure(
    losses: pd.DataFrame, switches: pd.DataFrame | None = None, order: Sequence[str] | None = None
) -> Figure:
    """The teacher's collapse signals against epochs, one panel per signal present.

    Near-uniform targets (entropy near 1) teach nothing; sharp targets that all pick one prototype
    (per-image entropy near 0 *and* one prototype per batch) are the other collapse.
    """
    signals = [s for s in TEACHER_SIGNALS if s[0] in losses.columns and losses[s[0]].notna().any()]
    fig, axes = new_figure(1, max(1, len(signals)), width=3.3, height=3.0)
    runs = _labels(losses, order)
    colors = checkpoint_colors(order or runs)
    for ax, (column, title, ylabel) in zip(axes[0], signals):
        for run in runs:
            part = losses[losses["run"] == run].sort_values("epoch").dropna(subset=[column])
            ax.plot(part["epoch"], part[column], color=colors[run], linewidth=1.0, label=run)
        _mark_switches(ax, switches, "epoch", colors)
        if column == "teacher_prototypes":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    if signals:
        _switch_legend(axes[0, 0], switches)
        axes[0, 0].legend(frameon=False)
    return fig


def corruption_bars_figure(
    per_corruption: pd.DataFrame, clean: pd.DataFrame, protocols: Sequence[str], order: Sequence[str] | None = None
) -> Figure:
    """Grouped bars: mean top-1 (%) over severities per corruption, one bar per run, a panel per probe.

    ``per_corruption`` columns: ``run, protocol, corruption, top1_pct``; ``clean``: ``run, protocol,
    clean_top1_pct`` (drawn as a dashed line across each panel in the run's colour).
    """
    fig, axes = new_figure(len(protocols), 1, width=11.0, height=3.3)
    runs = _labels(per_corruption, order)
    colors = checkpoint_colors(order or runs)
    width = 0.8 / max(1, len(runs))
    for ax, protocol in zip(axes[:, 0], protocols):
        part = per_corruption[per_corruption["protocol"] == protocol]
        names = list(dict.fromkeys(part["corruption"]))
        x = np.arange(len(names))
        for i, run in enumerate(runs):
            rows = part[part["run"] == run].set_index("corruption")
            values = [float(rows.loc[n, "top1_pct"]) if n in rows.index else math.nan for n in names]
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, color=colors[run], label=run)
            base = clean[(clean["run"] == run) & (clean["protocol"] == protocol)]["clean_top1_pct"]
            if len(base) and pd.notna(base.iloc[0]):
                ax.axhline(float(base.iloc[0]), color=colors[run], linestyle="--", linewidth=1, label=f"{run} clean")
        ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=35, ha="right")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"Accuracy per corruption (mean over severities), {protocol} probe")
        ax.legend(frameon=False, ncol=2 * max(1, len(runs)), loc="upper right", fontsize=7)
    return fig


def severity_figure(severity: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Top-1 (%) against severity (0 = clean) per corruption group; solid = linear, dashed = kNN.

    ``severity`` columns: ``run, protocol, group, severity, top1_pct``.
    """
    groups = list(dict.fromkeys(severity["group"])) if len(severity) else []
    fig, axes = new_figure(1, max(1, len(groups)), width=3.0, height=3.0, sharey=True)
    runs = _labels(severity, order)
    colors = checkpoint_colors(order or runs)
    for ax, group in zip(axes[0], groups):
        part = severity[severity["group"] == group]
        for run in runs:
            for protocol in dict.fromkeys(part["protocol"]):
                rows = part[(part["run"] == run) & (part["protocol"] == protocol)].sort_values("severity")
                ax.plot(
                    rows["severity"],
                    rows["top1_pct"],
                    PROTOCOL_STYLE.get(protocol, ":"),
                    marker="o",
                    markersize=3,
                    color=colors[run],
                    label=f"{run}, {protocol}",
                )
        ax.set_title(f"{group} corruptions")
        ax.set_xlabel("severity (0 = clean)")
        ax.set_xticks(range(0, 6))
    axes[0, 0].set_ylabel("top-1 accuracy (%), mean over the group")
    axes[0, 0].set_ylim(0, 100)
    if groups:
        axes[0, 0].legend(frameon=False, fontsize=7)
    return fig
