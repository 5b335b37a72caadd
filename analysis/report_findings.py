"""The headline numbers per run and the findings: plain sentences on each run against the reference."""

from __future__ import annotations

import math

import pandas as pd

CLEAN_TOLERANCE_PP = 2.0  # a clean-accuracy point estimate "within +-2 pp" of the reference (not a test)


def _get(df: pd.DataFrame, run: str, column: str, **where) -> float:
    if df is None or df.empty or column not in df.columns:
        return math.nan
    mask = df["run"] == run
    for k, v in where.items():
        mask &= df[k] == v
    values = df.loc[mask, column]
    return float(values.iloc[0]) if len(values) and pd.notna(values.iloc[0]) else math.nan


def headline_numbers(labels: list[str], cost: pd.DataFrame, robust: pd.DataFrame, freq: pd.DataFrame) -> dict:
    out = {}
    for run in labels:
        h = {
            k: _get(cost, run, k)
            for k in (
                "wall_clock_s",
                "speedup_vs_ref",
                "total_tflops",
                "flops_ratio_vs_ref",
                "flops_ratio_vs_none_schedule",
                "final_knn_top1_pct",
            )
        }
        for protocol in ("linear", "knn"):
            for k in (
                "clean_top1_pct",
                "mean_corruption_error_pct",
                "mCE_vs_ref_pct",
                "relative_mCE_vs_ref_pct",
                "noise_top1_pct",
                "blur_top1_pct",
            ):
                h[f"{protocol}_{k}"] = _get(robust, run, k, protocol=protocol)
        for k in ("heatmap_mean_error_pct", "heatmap_centroid_frac", "crossing_frac", "noise_minus_blur_pp"):
            h[k] = _get(freq, run, k)
        out[run] = h
    return out


def chance_pct(freq: dict) -> float | None:
    """Chance accuracy (%) from the class count the frequency analysis recorded, if any."""
    classes = [f.summary.get("num_classes") for f in freq.values() if f.summary.get("num_classes")]
    return 100.0 / max(classes) if classes else None


def findings(labels: list[str], reference: str | None, headline: dict, chance_pct: float | None = None) -> list[str]:
    """Plain sentences: each run against the reference, in the paper's three directions.

    With ``chance_pct`` known, a run whose clean linear accuracy is under twice chance gets a
    warning: differences between barely trained models say little about the curriculum.
    """
    if reference is None:
        return [
            "No reference run (none trained with --curriculum none; choose one with --reference): "
            "no ratios or differences."
        ]
    ref = headline[reference]
    out = []
    for run in labels:
        if run == reference:
            continue
        h = headline[run]
        parts = []
        if not math.isnan(h["flops_ratio_vs_ref"]):
            parts.append(
                f"{h['flops_ratio_vs_ref']:.2f}x fewer training FLOPs and a {h['speedup_vs_ref']:.2f}x "
                f"wall-clock speed-up than {reference} "
                f"({'cheaper' if h['flops_ratio_vs_ref'] > 1 and h['speedup_vs_ref'] > 1 else 'NOT cheaper in both'})"
            )
        for protocol in ("linear", "knn"):
            dc = h[f"{protocol}_clean_top1_pct"] - ref[f"{protocol}_clean_top1_pct"]
            dn = h[f"{protocol}_noise_top1_pct"] - ref[f"{protocol}_noise_top1_pct"]
            db = h[f"{protocol}_blur_top1_pct"] - ref[f"{protocol}_blur_top1_pct"]
            if math.isnan(dc):
                continue
            # never "equal" from a point estimate: only say whether it lies inside the tolerance band
            verdict = (
                f"within +-{CLEAN_TOLERANCE_PP:g} pp"
                if abs(dc) <= CLEAN_TOLERANCE_PP
                else ("higher" if dc > 0 else "lower")
            )
            # point estimates only: the statistically worded lines come from analysis.paired
            parts.append(
                f"{protocol} probe: clean accuracy {dc:+.1f} pp ({verdict} by point estimate; not a test: "
                f"the intervals are in the paired differences), noise-group accuracy {dn:+.1f} pp "
                f"({'up' if dn > 0 else 'not up'}), blur-group {db:+.1f} pp, "
                f"mCE vs {reference} {h[f'{protocol}_mCE_vs_ref_pct']:.1f}%"
            )
        if not math.isnan(h["heatmap_centroid_frac"]) and not math.isnan(ref["heatmap_centroid_frac"]):
            parts.append(
                f"heat-map sensitivity centroid {ref['heatmap_centroid_frac']:.3f} -> "
                f"{h['heatmap_centroid_frac']:.3f} of Nyquist, mean heat-map error "
                f"{ref['heatmap_mean_error_pct']:.1f}% -> {h['heatmap_mean_error_pct']:.1f}%"
            )
        out.append(f"**{run}** vs **{reference}**: " + ("; ".join(parts) if parts else "nothing to compare yet"))
    if chance_pct:
        weak = [
            f"{run} {headline[run]['linear_clean_top1_pct']:.1f}%"
            for run in labels
            if headline[run]["linear_clean_top1_pct"] < 2 * chance_pct
        ]
        if weak:
            out.append(
                f"**Caution**: clean linear accuracy under twice chance ({chance_pct:.1f}%): "
                f"{', '.join(weak)}. These models are barely trained, so the differences above "
                "say little about the curriculum; train longer before drawing conclusions."
            )
    return out


HEADLINE_ROWS = [
    ("training wall-clock (s)", "wall_clock_s", "{:.1f}"),
    ("speed-up vs reference", "speedup_vs_ref", "{:.2f}x"),
    ("training TFLOPs", "total_tflops", "{:.3g}"),
    ("FLOPs ratio vs reference", "flops_ratio_vs_ref", "{:.2f}x"),
    ("final online kNN top-1 (%)", "final_knn_top1_pct", "{:.1f}"),
    ("clean top-1, linear (%)", "linear_clean_top1_pct", "{:.1f}"),
    ("clean top-1, kNN (%)", "knn_clean_top1_pct", "{:.1f}"),
    ("  floor: pixels, linear (%)", "linear_pixels_floor_clean_top1_pct", "{:.1f}"),
    ("  floor: pixels, kNN (%)", "knn_pixels_floor_clean_top1_pct", "{:.1f}"),
    ("  floor: random-init, linear (%)", "linear_random_init_floor_clean_top1_pct", "{:.1f}"),
    ("  floor: random-init, kNN (%)", "knn_random_init_floor_clean_top1_pct", "{:.1f}"),
    ("  ceiling: supervised, linear (%)", "linear_ceiling_clean_top1_pct", "{:.1f}"),
    ("  ceiling: supervised, kNN (%)", "knn_ceiling_clean_top1_pct", "{:.1f}"),
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


def headline_frame(headline: dict) -> pd.DataFrame:
    """The headline numbers as a table: one row per quantity, one column per run."""
    return pd.DataFrame(
        [{"quantity": title, **{run: headline[run].get(key) for run in headline}} for title, key, _ in HEADLINE_ROWS]
    )


def headline_table(headline: dict) -> str:
    """The headline numbers as a plain-text table: one row per quantity, one column per run."""
    runs = list(headline)
    rows = []
    for title, key, fmt in HEADLINE_ROWS:
        values = [headline[r].get(key) for r in runs]
        cells = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v) for v in values]
        rows.append([title, *cells])
    widths = [max(len(str(x)) for x in col) for col in zip(["", *runs], *rows)]
    lines = [
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [["", *runs], *rows]
    ]
    return "\n".join(lines)
