"""Figure helpers: one style, PNG + PDF output, colour bars, shared scales.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state, no GUI backend),
and every plotting function takes the same pandas DataFrame that its caller writes as CSV, so the
numbers in a figure are exactly the numbers in its CSV. Each function returns the Figure; save it with
:func:`save_figure`, which writes ``<stem>.png`` and ``<stem>.pdf`` atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from corruptions import registry
from fdbench.io import atomic_open

__all__ = [
    "STYLE",
    "new_figure",
    "save_figure",
    "checkpoint_colors",
    "nice_max",
    "heatmap_array",
    "draw_heatmap",
    "heatmap_figure",
    "heatmap_comparison_figure",
    "bandpass_figure",
    "spectra_figure",
    "robustness_frequency_figure",
    "ring_curve_figure",
    "FAMILY_OF",
]

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": False,
    "savefig.bbox": "tight",
}
ERROR_CMAP = "viridis"  # sequential: error rate 0 -> max
DIFF_CMAP = "RdBu_r"  # diverging, centred at 0: red = more errors
# colour-blind-safe qualitative palette (Okabe-Ito), one colour per checkpoint in every figure
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

# ImageNet-C families (one definition: corruptions.registry.FAMILIES); used to group corruption curves
# and to colour points. The four extra corruptions go with the family their ImageNet-C paper places them in.
FAMILY_OF = {
    **{name: family for family, members in registry.FAMILIES.items() for name in members},
    "speckle_noise": "noise",
    "gaussian_blur": "blur",
    "spatter": "weather",
    "saturate": "digital",
}
FAMILIES = ("noise", "blur", "weather", "digital", "other")


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.2, height: float = 3.4, **kwargs):
    """A Figure with an ``nrows x ncols`` grid of axes (``width``/``height`` per panel, inches)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig: Figure, stem: str | Path, *, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically; returns both paths."""
    import matplotlib

    stem = Path(stem)
    paths = []
    with matplotlib.rc_context(STYLE):
        for ext in ("png", "pdf"):
            path = stem.with_name(stem.name + "." + ext)
            with atomic_open(path, "wb") as fh:
                fig.savefig(fh, format=ext, dpi=dpi)
            paths.append(path)
    return paths


def checkpoint_colors(labels: Sequence[str]) -> dict[str, str]:
    """One colour per checkpoint; beyond the palette, matplotlib's tab20 so no two share a colour."""
    if len(labels) <= len(PALETTE):
        return {label: PALETTE[i] for i, label in enumerate(labels)}
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {label: matplotlib.colors.to_hex(cmap(i % 20)) for i, label in enumerate(labels)}


def nice_max(value: float, step: float = 10.0, cap: float | None = 100.0) -> float:
    """``value`` rounded up to a multiple of ``step`` (at least one step), capped at ``cap``."""
    top = max(step, math.ceil(max(value, 0.0) / step) * step)
    return min(top, cap) if cap is not None else top


def heatmap_array(df: pd.DataFrame, value: str = "error_pct") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pivot a long heat-map frame (``ky``, ``kx``, value) into ``(array [ky, kx], ky values, kx values)``,
    rows in increasing ky and columns in increasing kx."""
    table = df.pivot(index="ky", columns="kx", values=value).sort_index().sort_index(axis=1)
    return table.to_numpy(dtype=float), table.index.to_numpy(), table.columns.to_numpy()


def draw_heatmap(
    fig: Figure,
    ax,
    df: pd.DataFrame,
    *,
    value: str = "error_pct",
    vmin=None,
    vmax=None,
    cmap: str = ERROR_CMAP,
    norm=None,
    label: str = "error rate (%)",
    title: str = "",
):
    """Heat map with low frequencies at the centre, axes in cycles/image and a colour bar."""
    arr, ky, kx = heatmap_array(df, value)
    extent = (kx[0] - 0.5, kx[-1] + 0.5, ky[0] - 0.5, ky[-1] + 0.5)
    image = ax.imshow(
        arr,
        origin="lower",
        extent=extent,
        cmap=cmap,
        interpolation="nearest",
        norm=norm,
        vmin=None if norm is not None else vmin,
        vmax=None if norm is not None else vmax,
        aspect="equal",
    )
    ax.set_xlabel("horizontal frequency $k_x$ (cycles/image)")
    ax.set_ylabel("vertical frequency $k_y$ (cycles/image)")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    return image


def heatmap_figure(df: pd.DataFrame, *, title: str, vmax: float | None = None) -> Figure:
    """One checkpoint's Fourier heat map (error rate, shared 0..vmax scale across checkpoints)."""
    fig, axes = new_figure(width=4.6, height=3.9)
    vmax = vmax if vmax is not None else nice_max(float(df["error_pct"].max()))
    draw_heatmap(fig, axes[0, 0], df, vmin=0.0, vmax=vmax, title=title)
    return fig


def heatmap_comparison_figure(df: pd.DataFrame, label_a: str, label_b: str, *, suptitle: str = "") -> Figure:
    """Side-by-side heat maps of two checkpoints on one scale, and their difference B - A.

    ``df`` columns: ``ky, kx, error_a, error_b, diff`` (diff = error_b - error_a, percentage points).
    The difference uses a diverging colour map centred at 0 (red: B makes more errors).
    """
    fig, axes = new_figure(1, 3, width=4.3, height=3.8)
    vmax = nice_max(float(max(df["error_a"].max(), df["error_b"].max())))
    draw_heatmap(fig, axes[0, 0], df, value="error_a", vmin=0, vmax=vmax, title=f"A: {label_a}")
    draw_heatmap(fig, axes[0, 1], df, value="error_b", vmin=0, vmax=vmax, title=f"B: {label_b}")
    bound = max(1.0, float(df["diff"].abs().max()))
    title = "B - A"
    if "significant" in df.columns:
        sig = df[df["significant"].astype(bool)]
        title = f"B - A; outlined: significant ({len(sig)} of {len(df)} cells,\nMcNemar, FDR 5%)"
    draw_heatmap(
        fig,
        axes[0, 2],
        df,
        value="diff",
        cmap=DIFF_CMAP,
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
        label="error-rate difference B - A (pp)",
        title=title,
    )
    if "significant" in df.columns and len(sig):
        # only the cells whose difference survives McNemar + Benjamini-Hochberg are marked
        for _, row in sig.iterrows():
            axes[0, 2].add_patch(
                Rectangle((row["kx"] - 0.5, row["ky"] - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=0.8)
            )
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def bandpass_figure(
    df: pd.DataFrame, *, chance_pct: float | None = None, crossings: dict[str, float] | None = None
) -> Figure:
    """Low-pass (solid) and high-pass (dashed) accuracy against the filter radius, every checkpoint.

    ``df`` columns: ``checkpoint, filter ("low"/"high"), radius_frac, accuracy_pct``. ``crossings``
    maps a checkpoint to its crossing radius (fraction of Nyquist), marked with a dotted line.
    """
    fig, axes = new_figure(width=7.6, height=3.8)
    ax = axes[0, 0]
    labels = list(dict.fromkeys(df["checkpoint"]))
    colors = checkpoint_colors(labels)
    for label in labels:
        for kind, style in (("low", "-"), ("high", "--")):
            part = df[(df["checkpoint"] == label) & (df["filter"] == kind)].sort_values("radius_frac")
            ax.plot(
                part["radius_frac"],
                part["accuracy_pct"],
                style,
                marker="o",
                markersize=2.5,
                color=colors[label],
                label=f"{label}, {kind}-pass",
            )
            if "accuracy_pct_lo" in part.columns and part["accuracy_pct_lo"].notna().any():
                ax.fill_between(
                    part["radius_frac"],
                    part["accuracy_pct_lo"],
                    part["accuracy_pct_hi"],
                    color=colors[label],
                    alpha=0.15 if kind == "low" else 0.08,
                    linewidth=0,
                )
        if crossings and crossings.get(label) is not None and np.isfinite(crossings[label]):
            ax.axvline(crossings[label], color=colors[label], linestyle=":", linewidth=1)
    if chance_pct is not None:
        ax.axhline(chance_pct, color="0.5", linewidth=0.8, linestyle="-.", label="chance")
    ax.set_xlabel("filter radius r (fraction of Nyquist; 1 = N/2 cycles/image)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, float(df["radius_frac"].max()))
    ax.set_title("Band-pass accuracy: low-pass keeps |k| <= r, high-pass |k| > r")
    # outside the axes: inside, any corner can hold a curve
    note = " (bands: 95% bootstrap CI over images)" if "accuracy_pct_lo" in df.columns else ""
    # one legend entry per checkpoint (its colour, from its low-pass line); the styles explained once
    lines = {line.get_label(): line for line in ax.get_lines()}
    handles = [lines[f"{label}, low-pass"] for label in labels]
    names = list(labels)
    if chance_pct is not None:
        handles.append(lines["chance"])
        names.append("chance")
    handles += [Line2D([], [], linestyle="-", color="0.3"), Line2D([], [], linestyle="--", color="0.3")]
    names += ["solid: low-pass", "dashed: high-pass"]
    title = "checkpoint" + note
    if len(labels) <= 6:
        ax.legend(
            handles, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title=title, title_fontsize=7
        )
    else:
        # many checkpoints (an ablation): a multi-column legend under the axes keeps the plot its size
        fig.set_size_inches(7.6, 3.8 + 0.22 * math.ceil(len(names) / 4))
        fig.legend(
            handles, names, loc="outside lower center", ncol=4, frameon=False, fontsize=7, title=title, title_fontsize=7
        )
    return fig


def ring_curve_figure(
    curves: pd.DataFrame, diff: pd.DataFrame | None = None, *, pair: tuple[str, str] | None = None
) -> Figure:
    """Radially averaged heat map: error vs |k| per checkpoint with 95% bands, and the paired B - A curve.

    ``curves`` columns: ``checkpoint, radius_frac, error_pct, error_pct_lo, error_pct_hi``; ``diff``:
    ``radius_frac, diff_pp, diff_pp_lo, diff_pp_hi, significant`` (rings whose interval excludes 0
    are drawn filled).
    """
    fig, axes = new_figure(1, 2 if diff is not None else 1, width=4.8, height=3.6)
    ax = axes[0, 0]
    labels = list(dict.fromkeys(curves["checkpoint"]))
    colors = checkpoint_colors(labels)
    for label in labels:
        part = curves[curves["checkpoint"] == label].sort_values("radius_frac")
        ax.plot(
            part["radius_frac"],
            part["error_pct"],
            marker="o",
            markersize=2.5,
            color=colors[label],
            label=f"{label} (n={int(part['n'].iloc[0])} images)",
        )
        ax.fill_between(
            part["radius_frac"], part["error_pct_lo"], part["error_pct_hi"], color=colors[label], alpha=0.2, linewidth=0
        )
    ax.set_ylim(0, nice_max(float(curves["error_pct_hi"].max())))
    ax.set_xlabel("frequency |k| (fraction of Nyquist; ring = round(|k|))")
    ax.set_ylabel("error rate under the perturbation (%)")
    ax.set_title("Ring-averaged Fourier heat map (95% bootstrap CI)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=1)
    if diff is not None:
        ax = axes[0, 1]
        d = diff.sort_values("radius_frac")
        ax.fill_between(
            d["radius_frac"],
            d["diff_pp_lo"],
            d["diff_pp_hi"],
            color="0.6",
            alpha=0.35,
            linewidth=0,
            label="95% paired bootstrap CI",
        )
        ax.plot(d["radius_frac"], d["diff_pp"], color="0.15", linewidth=1)
        sig = d["significant"].astype(bool)
        ax.plot(
            d.loc[sig, "radius_frac"],
            d.loc[sig, "diff_pp"],
            "o",
            color="#D55E00",
            markersize=4,
            label=f"CI excludes 0 ({int(sig.sum())} of {len(d)} rings)",
        )
        ax.plot(
            d.loc[~sig, "radius_frac"],
            d.loc[~sig, "diff_pp"],
            "o",
            mfc="white",
            color="0.15",
            markersize=3.5,
            label="CI covers 0",
        )
        ax.axhline(0, color="0.5", linewidth=0.8)
        a, b = pair if pair else ("A", "B")
        ax.set_xlabel("frequency |k| (fraction of Nyquist)")
        ax.set_ylabel(f"error difference {b} - {a} (pp)")
        ax.set_title(f"{b} - {a}, paired over the same images")
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.2))
    return fig


def spectra_figure(df: pd.DataFrame, *, severity: int) -> Figure:
    """Radially averaged power spectrum of (corrupted - clean), one panel per corruption family.

    ``df`` columns: ``corruption, severity, radius_frac, mean_power`` (rows of ``severity`` are drawn).
    """
    part = df[df["severity"] == severity]
    families = [f for f in FAMILIES if any(FAMILY_OF.get(c, "other") == f for c in part["corruption"].unique())]
    fig, axes = new_figure(1, max(1, len(families)), width=3.4, height=3.3, sharey=True)
    top = float(part["mean_power"].max()) if len(part) else 1.0
    for ax, family in zip(axes[0], families):
        names = [c for c in dict.fromkeys(part["corruption"]) if FAMILY_OF.get(c, "other") == family]
        for i, name in enumerate(names):
            rows = part[part["corruption"] == name].sort_values("radius_frac")
            rows = rows[rows["mean_power"] > 0]
            ax.semilogy(rows["radius_frac"], rows["mean_power"], color=PALETTE[i % len(PALETTE)], label=name)
        ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_title(family)
        ax.set_xlabel("frequency |k| (fraction of Nyquist)")
        ax.legend(frameon=False, fontsize=7)
    if top > 0:
        # eight decades below the strongest bin: exact zeros (e.g. the DC of a blur) would squash the rest
        axes[0, 0].set_ylim(top * 1e-8, top * 3)
    axes[0, 0].set_ylabel("mean power of corrupted - clean (per coefficient)")
    fig.suptitle(f"Where each corruption puts its energy (severity {severity})")
    return fig


def robustness_frequency_figure(df: pd.DataFrame) -> Figure:
    """Accuracy drop against the corruption's spectral centroid, one colour per checkpoint.

    ``df`` columns: ``checkpoint, corruption, centroid_frac, drop_pp``; marker shape = family.
    """
    fig, axes = new_figure(width=6.0, height=4.2)
    ax = axes[0, 0]
    markers = {"noise": "o", "blur": "s", "weather": "^", "digital": "D", "other": "x"}
    labels = list(dict.fromkeys(df["checkpoint"]))
    colors = checkpoint_colors(labels)
    for label in labels:
        part = df[df["checkpoint"] == label]
        for family, marker in markers.items():
            rows = part[part["corruption"].map(lambda c: FAMILY_OF.get(c, "other")) == family]
            if len(rows):
                ax.scatter(rows["centroid_frac"], rows["drop_pp"], color=colors[label], marker=marker, s=22, alpha=0.85)
    first = df[df["checkpoint"] == labels[0]] if labels else df
    for _, row in first.iterrows():
        ax.annotate(
            row["corruption"].replace("_", " "),
            (row["centroid_frac"], row["drop_pp"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
            color="0.3",
        )
    for label in labels:
        ax.scatter([], [], color=colors[label], marker="o", label=label)
    for family, marker in markers.items():
        if (df["corruption"].map(lambda c: FAMILY_OF.get(c, "other")) == family).any():
            ax.scatter([], [], color="0.4", marker=marker, label=family)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("spectral centroid of corrupted - clean (fraction of Nyquist)")
    ax.set_ylabel("accuracy drop vs clean (percentage points)")
    ax.set_title("Robustness vs corruption frequency (mean over severities)")
    ax.legend(frameon=False, loc="best")
    return fig
