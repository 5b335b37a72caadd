"""The report's frequency tables: the per-run bias numbers, and the band-pass curves, heat-map
comparisons and robustness-vs-frequency tables drawn from the frequency-analysis folders found."""

from __future__ import annotations

import math
import re

import pandas as pd

from analysis.frequency_analyses import comparison_frame, robustness_table
from analysis.report_discovery import FrequencyData, RunRecord


FREQ_COLUMNS = (
    "clean_top1_pct",
    "heatmap_mean_error_pct",
    "heatmap_low_error_pct",
    "heatmap_high_error_pct",
    "heatmap_centroid_frac",
    "crossing_frac",
    "lowpass_auc_pct",
    "highpass_auc_pct",
    "noise_top1_pct",
    "blur_top1_pct",
    "noise_minus_blur_pp",
)


def frequency_table(records: list[RunRecord], freq: dict[str, FrequencyData]) -> pd.DataFrame:
    rows = []
    for r in records:
        data = freq.get(r.label)
        if data is None:
            continue
        s = data.summary
        rows.append(
            {
                "run": r.label,
                **{c: s.get(c, math.nan) for c in FREQ_COLUMNS},
                "image_size": s.get("image_size"),
                "eps": s.get("eps"),
                "window": s.get("window"),
                "heatmap_images": s.get("heatmap_images"),
                "bandpass_images": s.get("bandpass_images"),
                "source": str(data.folder),
            }
        )
    return pd.DataFrame(rows)


def frequency_extras(records, freq: dict[str, FrequencyData], results, ref) -> dict[str, pd.DataFrame]:
    """Band-pass curves of all runs, heat-map comparisons against the reference, robustness vs frequency."""
    out = {}
    labels = [r.label for r in records]
    bands = [freq[l].bandpass.assign(run=l) for l in labels if l in freq and freq[l].bandpass is not None]
    if bands:
        df = pd.concat(bands, ignore_index=True)
        out["frequency_bandpass"] = df[["run"] + [c for c in df.columns if c != "run"]]
    maps = [l for l in labels if l in freq and freq[l].heatmap is not None]
    if len(maps) >= 2:
        base = ref if ref in maps else maps[0]
        for other in [l for l in maps if l != base]:
            a, b = freq[base].heatmap, freq[other].heatmap
            if len(a) == len(b) and set(zip(a["ky"], a["kx"])) == set(zip(b["ky"], b["kx"])):
                out[f"frequency_heatmap_{_safe(base)}_vs_{_safe(other)}"] = comparison_frame(a, b)
    centroids = next((freq[l].centroids for l in labels if l in freq and freq[l].centroids is not None), None)
    if centroids is not None and results is not None and not results.empty:
        table = robustness_table(results, centroids)
        if not table.empty:
            out["robustness_vs_frequency"] = table.rename(columns={"checkpoint": "run"})
    return out


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)
