"""The frequency analysis's figures (PNG + PDF) and the paired ring tables drawn beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import frequency_stats as fstats
from analysis import plots
from analysis.frequency_analyses import (
    cell_outcomes,
    comparison_frame,
    comparison_pair,
    crossing_radius,
    robustness_table,
)
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv


def draw_figures(
    out: Path, heatmaps, bandpasses, infos, spectra, centroids, results, config, files, outcomes: dict | None = None
) -> dict:
    """Every figure, each drawn from the DataFrame that is (or was) written as its CSV.

    ``outcomes``: per-image outcomes by ``(analysis, label)``; with them the heat maps get their ring
    curves with bootstrap intervals and the difference map marks its significant cells."""
    outcomes = outcomes or {}
    figures = {}

    def emit(name, fig):
        files.extend(plots.save_figure(fig, out / name))
        figures[name] = fig

    if heatmaps:
        vmax = plots.nice_max(max(float(df["error_pct"].max()) for df in heatmaps.values()))
        for label, df in heatmaps.items():
            info = infos[label]
            emit(
                f"{label}/heatmap",
                plots.heatmap_figure(
                    df,
                    vmax=vmax,
                    title=f"{label}: Fourier heat map (eps {info['eps']:.2f}, "
                    f"{info['heatmap_images']} images, clean error {info['heatmap_clean_error_pct']:.1f}%)",
                ),
            )
        same = [l for l in heatmaps if len(heatmaps[l]) == len(next(iter(heatmaps.values())))]
        pair = comparison_pair(infos, same) if len(same) >= 2 else None
        rings = _ring_tables(heatmaps, outcomes, infos, pair, config.seed)
        if rings is not None:
            curves, diff = rings
            atomic_write_csv(out / "heatmap_rings.csv", curves)
            files.append(out / "heatmap_rings.csv")
            if diff is not None:
                atomic_write_csv(out / "heatmap_rings_difference.csv", diff)
                files.append(out / "heatmap_rings_difference.csv")
            emit("heatmap_rings", plots.ring_curve_figure(curves, diff, pair=pair))
        if pair is not None:
            label_a, label_b = pair
            comp = comparison_frame(heatmaps[label_a], heatmaps[label_b])
            paired = _paired_cells(heatmaps, outcomes, label_a, label_b)
            if paired is not None:
                comp["p_value"] = fstats.mcnemar_p(*paired)
                comp["significant"] = fstats.benjamini_hochberg(comp["p_value"].to_numpy())
            atomic_write_csv(out / "heatmap_comparison.csv", comp)
            files.append(out / "heatmap_comparison.csv")
            emit(
                "heatmap_comparison",
                plots.heatmap_comparison_figure(
                    comp, label_a, label_b, suptitle="Fourier heat maps: error rate under a unit Fourier perturbation"
                ),
            )
    if bandpasses:
        combined = pd.concat([df.assign(checkpoint=label) for label, df in bandpasses.items()], ignore_index=True)
        combined = combined[["checkpoint"] + [c for c in combined.columns if c != "checkpoint"]]
        atomic_write_csv(out / "bandpass.csv", combined)
        files.append(out / "bandpass.csv")
        chance = 100 / max(infos[l].get("num_classes", 1) for l in bandpasses)
        emit(
            "bandpass",
            plots.bandpass_figure(
                combined, chance_pct=chance, crossings={l: crossing_radius(df) for l, df in bandpasses.items()}
            ),
        )
    if spectra is not None:
        emit("spectra", plots.spectra_figure(spectra, severity=config.severity))
        if results is not None:
            table = robustness_table(results, centroids)
            if table.empty:
                raise FdbenchError(
                    "the eval-corruptions results have no clean rows or no corruption in common with the spectra"
                )
            atomic_write_csv(out / "robustness_vs_frequency.csv", table)
            files.append(out / "robustness_vs_frequency.csv")
            emit("robustness_vs_frequency", plots.robustness_frequency_figure(table))
    return figures


def _paired_cells(heatmaps, outcomes, label_a: str, label_b: str):
    """Both checkpoints' ``[cells, n]`` outcomes when they were measured on the same images, else None."""
    ka, kb = outcomes.get(("heatmap", label_a)), outcomes.get(("heatmap", label_b))
    if (
        ka is None
        or kb is None
        or not np.array_equal(ka["images"], kb["images"])
        or ka["wrong"].shape != kb["wrong"].shape
    ):
        return None
    return cell_outcomes(heatmaps[label_a], ka), cell_outcomes(heatmaps[label_b], kb)


def _ring_tables(heatmaps, outcomes, infos, pair, seed: int):
    """(ring curves of every checkpoint, paired ring difference of the pair or None), or None without
    per-image outcomes."""
    frames = []
    for label, df in heatmaps.items():
        kept = outcomes.get(("heatmap", label))
        if kept is None:
            return None
        curve = fstats.ring_curve(
            cell_outcomes(df, kept), df["radius"].to_numpy(float), infos[label]["image_size"], seed=seed
        )
        frames.append(curve.assign(checkpoint=label))
    curves = pd.concat(frames, ignore_index=True)
    curves = curves[["checkpoint"] + [c for c in curves.columns if c != "checkpoint"]]
    diff = None
    if pair is not None:
        paired = _paired_cells(heatmaps, outcomes, *pair)
        if paired is not None:
            diff = fstats.ring_difference(
                *paired, heatmaps[pair[0]]["radius"].to_numpy(float), infos[pair[0]]["image_size"], seed=seed
            )
            diff.insert(0, "b", pair[1])
            diff.insert(0, "a", pair[0])
    return curves, diff
