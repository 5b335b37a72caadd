"""Error bars for the frequency analysis, from per-image outcomes (pure functions, no model, no files
except the outcome archive).

Every heat-map cell and band-pass point is an average over the same ``n`` images, so the unit of
resampling is the image: a bootstrap resample draws ``n`` image indices with replacement
(``numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))``) and every statistic is
recomputed on it. Intervals are the 2.5 and 97.5 percentiles (``numpy.percentile``, linear) of the
resampled values. Two checkpoints analysed on the same images with the same signs are compared
*paired*: the same resampled indices are applied to both.

Rings: a window cell ``(ky, kx)`` belongs to ring ``round(|k|)``; a ring's error is the mean of the
per-image outcomes over all its cells (the cells as displayed, so a mirror pair counts twice, as in
the heat-map means). Per image that is ``e_i(ring) = mean_cells wrong[cell, i]``; the ring curve is
``mean_i e_i``, and its bootstrap resamples ``i``.

Significant cells of a difference map: McNemar's exact test per cell (two-sided binomial test on
the discordant images), then Benjamini-Hochberg at false-discovery rate 5% over the window's cells,
so that with about a thousand cells the marked ones are not just the 5% that chance alone marks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.frequency_analyses import cell_outcomes
from fdbench.errors import FdbenchError
from fdbench.io import atomic_open

RESAMPLES = 1000
LEVEL = 0.95


# ---- the per-image outcome archive ---------------------------------------------------------------


def save_outcomes(path: str | Path, **arrays: np.ndarray) -> None:
    """Write boolean outcome matrices ``[..., n]`` as packed bits (8 images a byte) plus any other
    array as is, into one ``.npz`` written atomically. Each boolean ``name`` is stored as
    ``name__bits`` and ``name__n`` so :func:`load_outcomes` can unpack it."""
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == bool:
            out[f"{name}__bits"] = np.packbits(value, axis=-1)
            out[f"{name}__n"] = np.int64(value.shape[-1])
        else:
            out[name] = value
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **out)


def load_outcomes(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays :func:`save_outcomes` wrote (booleans unpacked); numbers only, nothing executed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise FdbenchError(f"cannot read the per-image outcomes {path}: {exc}") from None
    out = {}
    for key, value in raw.items():
        if key.endswith("__bits"):
            name = key[: -len("__bits")]
            n = int(raw[f"{name}__n"])
            out[name] = np.unpackbits(value, axis=-1, count=n).astype(bool)
        elif not key.endswith("__n"):
            out[key] = value
    return out


# ---- bootstrap -----------------------------------------------------------------------------------


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` image indices drawn with replacement (the scheme of the module docstring)."""
    if n < 1:
        raise FdbenchError("a bootstrap needs at least one image")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]``: how often each image occurs in each resample of :func:`bootstrap_indices`,
    divided by ``n`` (so ``values @ weights.T`` is the resampled mean)."""
    idx = bootstrap_indices(n, resamples, seed)
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    return counts / n


def interval(samples: np.ndarray, level: float = LEVEL, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``samples`` along ``axis`` (NaN samples ignored)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # a statistic that is NaN on every resample stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanpercentile(samples, tail, axis=axis), np.nanpercentile(samples, 100 - tail, axis=axis))


# ---- rings ---------------------------------------------------------------------------------------


def ring_of(radius: np.ndarray) -> np.ndarray:
    """The ring (integer ``round(|k|)``, half away from zero) of each cell's radius in cycles/image."""
    return np.floor(np.asarray(radius, dtype=float) + 0.5).astype(int)


def per_image_rings(cell_wrong: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rings [R], cells per ring [R], e [R, n])`` with ``e[r, i]`` the fraction of ring r's cells
    that image i got wrong; ``cell_wrong`` is ``[cells, n]`` boolean, ``radius`` ``[cells]``."""
    ring = ring_of(radius)
    rings = np.unique(ring)
    member = (ring[None, :] == rings[:, None]).astype(float)  # [R, cells]
    cells = member.sum(axis=1)
    return rings, cells.astype(int), member @ cell_wrong.astype(float) / cells[:, None]


def ring_curve(
    cell_wrong: np.ndarray,
    radius: np.ndarray,
    size: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Error vs |k| pooled over each ring, with its bootstrap interval over images.

    Returns ``ring, radius_frac (ring / (N/2)), cells, n, error_pct, error_pct_lo, error_pct_hi``.
    """
    rings, cells, e = per_image_rings(cell_wrong, radius)
    w = bootstrap_weights(e.shape[1], resamples, seed)
    lo, hi = interval(100 * e @ w.T, level)
    return pd.DataFrame(
        {
            "ring": rings,
            "radius_frac": rings / (size / 2),
            "cells": cells,
            "n": e.shape[1],
            "error_pct": 100 * e.mean(axis=1),
            "error_pct_lo": lo,
            "error_pct_hi": hi,
        }
    )


def ring_difference(
    wrong_a: np.ndarray,
    wrong_b: np.ndarray,
    radius: np.ndarray,
    size: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Paired ring curve of B - A (percentage points) with its bootstrap interval; a ring is
    ``significant`` when the interval excludes 0."""
    if wrong_a.shape != wrong_b.shape:
        raise FdbenchError(
            f"paired ring curves need the same cells and images, got {wrong_a.shape} and {wrong_b.shape}"
        )
    rings, cells, ea = per_image_rings(wrong_a, radius)
    _, _, eb = per_image_rings(wrong_b, radius)
    d = 100 * (eb - ea)
    lo, hi = interval(d @ bootstrap_weights(d.shape[1], resamples, seed).T, level)
    return pd.DataFrame(
        {
            "ring": rings,
            "radius_frac": rings / (size / 2),
            "cells": cells,
            "n": d.shape[1],
            "diff_pp": d.mean(axis=1),
            "diff_pp_lo": lo,
            "diff_pp_hi": hi,
            "significant": (lo > 0) | (hi < 0),
        }
    )


# ---- cells of a difference map -------------------------------------------------------------------


def mcnemar_p(wrong_a: np.ndarray, wrong_b: np.ndarray) -> np.ndarray:
    """Exact two-sided McNemar p-value per row of two ``[cells, n]`` boolean outcome matrices."""
    only_a = (wrong_a & ~wrong_b).sum(axis=-1)
    only_b = (wrong_b & ~wrong_a).sum(axis=-1)
    m = only_a + only_b
    p = 2 * stats.binom.cdf(np.minimum(only_a, only_b), m, 0.5)
    return np.where(m == 0, 1.0, np.minimum(p, 1.0))


def benjamini_hochberg(p: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects at false-discovery rate q."""
    p = np.asarray(p, dtype=float).ravel()
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, len(p) + 1) / len(p)
    reject = np.zeros(len(p), dtype=bool)
    if below.any():
        reject[order[: int(np.nonzero(below)[0].max()) + 1]] = True
    return reject


# ---- summary numbers with intervals --------------------------------------------------------------


def heatmap_summary_samples(
    cell_wrong: np.ndarray, radius: np.ndarray, clean_wrong: np.ndarray, window: int, size: int, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The heat-map summary numbers (definitions in :mod:`analysis.frequency`) on every resample."""
    err = 100 * cell_wrong.astype(float) @ weights.T  # [cells, B]
    clean = 100 * weights @ clean_wrong.astype(float)  # [B]
    low = radius < window / 4
    excess = np.clip(err - clean[None, :], 0, None)
    total = excess.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(total > 0, (excess * radius[:, None]).sum(axis=0) / total / (size / 2), np.nan)
    return {
        "heatmap_mean_error_pct": err.mean(axis=0),
        "heatmap_low_error_pct": err[low].mean(axis=0) if low.any() else np.full(len(clean), np.nan),
        "heatmap_high_error_pct": err[~low].mean(axis=0) if (~low).any() else np.full(len(clean), np.nan),
        "heatmap_centroid_frac": centroid,
    }


def crossing_of(fracs: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Smallest radius fraction where ``low >= high`` (linear interpolation), NaN if never."""
    gap = np.asarray(low, float) - np.asarray(high, float)
    hit = np.nonzero(gap >= 0)[0]
    if not len(hit):
        return math.nan
    j = int(hit[0])
    if j == 0:
        return float(fracs[0])
    return float(fracs[j - 1] + (fracs[j] - fracs[j - 1]) * (-gap[j - 1]) / (gap[j] - gap[j - 1]))


def auc_of(fracs: np.ndarray, acc: np.ndarray) -> float:
    """Mean of a curve over fractions 0..1 (trapezoid rule; points beyond 1 ignored)."""
    keep = np.asarray(fracs) <= 1 + 1e-9
    x, y = np.asarray(fracs, float)[keep], np.asarray(acc, float)[keep]
    if len(x) < 2:
        return float(y.mean()) if len(y) else math.nan
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def bandpass_samples(
    fracs: np.ndarray, low_wrong: np.ndarray, high_wrong: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Per resample: accuracy of every low/high point and crossing radius and AUCs.

    ``fracs`` ``[R]`` sorted; ``low_wrong``/``high_wrong`` ``[R, n]`` boolean."""
    low = 100 * (1 - low_wrong.astype(float) @ weights.T)  # [R, B]
    high = 100 * (1 - high_wrong.astype(float) @ weights.T)
    return {
        "low": low,
        "high": high,
        "crossing_frac": np.array([crossing_of(fracs, low[:, b], high[:, b]) for b in range(low.shape[1])]),
        "lowpass_auc_pct": np.array([auc_of(fracs, low[:, b]) for b in range(low.shape[1])]),
        "highpass_auc_pct": np.array([auc_of(fracs, high[:, b]) for b in range(low.shape[1])]),
    }


def heatmap_intervals(df: pd.DataFrame, kept: dict, info: dict, seed: int) -> dict[str, float]:
    """``<number>_lo`` / ``<number>_hi``: 95% bootstrap intervals (over images) of the heat-map numbers."""
    cells = cell_outcomes(df, kept)
    weights = bootstrap_weights(cells.shape[1], seed=seed)
    samples = heatmap_summary_samples(
        cells, df["radius"].to_numpy(float), kept["clean_wrong"], int(df["kx"].nunique()), info["image_size"], weights
    )
    out = {}
    for name, values in samples.items():
        lo, hi = interval(values)
        out.update({f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out


def bandpass_intervals(df: pd.DataFrame, kept: dict, seed: int) -> tuple[dict[str, float], pd.DataFrame]:
    """Bootstrap intervals of crossing radius and AUCs, and the curve with ``accuracy_pct_lo/_hi``."""
    wrong = kept["wrong"]
    weights = bootstrap_weights(wrong.shape[1], seed=seed)
    df = df.reset_index(drop=True).copy()
    low = df.index[df["filter"] == "low"][np.argsort(df.loc[df["filter"] == "low", "radius_frac"].to_numpy())]
    high = df.index[df["filter"] == "high"][np.argsort(df.loc[df["filter"] == "high", "radius_frac"].to_numpy())]
    samples = bandpass_samples(df.loc[low, "radius_frac"].to_numpy(float), wrong[low], wrong[high], weights)
    for rows, key in ((low, "low"), (high, "high")):
        lo, hi = interval(samples[key])
        df.loc[rows, "accuracy_pct_lo"], df.loc[rows, "accuracy_pct_hi"] = lo, hi
    out = {}
    for name in ("crossing_frac", "lowpass_auc_pct", "highpass_auc_pct"):
        lo, hi = interval(samples[name])
        out.update({f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out, df
