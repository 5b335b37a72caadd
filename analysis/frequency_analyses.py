"""The frequency analyses on any classifier (pure functions of images, labels and a callable) and
their summary numbers; :mod:`analysis.frequency` runs them per checkpoint and resumes them.

A classifier is any callable ``images float [B,3,N,N] in [0,1] -> logits [B,C] or labels [B]``.
Definitions of the summary numbers: :mod:`analysis.frequency`'s docstring.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis import fourier
from analysis.metrics import CLEAN, GROUPS, check_results
from fdbench.errors import FdbenchError
from fdbench.features import to_float01
from fdbench.io import atomic_torch_save, progress

Classifier = Callable[[torch.Tensor], torch.Tensor]


def _predict(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    out = classifier(images)
    return out.argmax(dim=1) if out.ndim == 2 else out


def _as_float01(images: torch.Tensor, device) -> torch.Tensor:
    return to_float01(images.to(device))


def wrong_mask(
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    transform: Callable | None = None,
    device=None,
) -> torch.Tensor:
    """Per image: whether ``classifier`` gets it wrong (bool ``[n]``, optionally through ``transform``)."""
    device = device or images.device
    wrong = []
    for start in range(0, len(images), batch_size):
        x = _as_float01(images[start : start + batch_size], device)
        if transform is not None:
            x = transform(x)
        wrong.append(_predict(classifier, x).cpu() != labels[start : start + batch_size].cpu())
    return torch.cat(wrong) if wrong else torch.zeros(0, dtype=torch.bool)


def fourier_heatmap(
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    window: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device=None,
    desc: str = "heat map",
    partial: str | Path | None = None,
    partial_key: str = "",
    save_every_s: float = 30.0,
    outcomes: dict | None = None,
) -> pd.DataFrame:
    """Error rate under a Fourier-basis perturbation for every frequency of a centred window.

    ``images``: [n, 3, N, N] (uint8 or float [0,1]); every (frequency, image) pair is one perturbed
    image, and ``batch_size`` of them go through the classifier at once. Returns a long frame with
    one row per window cell: ``ky, kx`` (cycles/image), ``radius`` (|k|), ``radius_frac`` (|k| / (N/2)),
    ``error_pct`` and ``n``. Signs are drawn from ``seed`` (one per frequency, image and channel).

    ``partial``: a file where the error counts so far are saved every ``save_every_s`` seconds; a later
    call with the same file and ``partial_key`` continues from there (the signs are fixed by the seed,
    so the result is identical to an uninterrupted run). The file is removed when the map is done.

    ``outcomes``: a dict that receives the per-image results, ``wrong`` (bool ``[F, n]``, one row per
    evaluated mirror pair) and ``index`` (``[window, window]``, the row each window cell shows).
    """
    n, size = len(images), images.shape[-1]
    if n == 0:
        raise FdbenchError("the heat map needs at least one image")
    if eps <= 0:
        raise FdbenchError(f"eps must be positive, got {eps}")
    window = window or fourier.default_window(size)
    unique, index = fourier.half_plane(size, window)
    device = torch.device(device) if device is not None else images.device
    x_all = _as_float01(images, device)
    labels = torch.as_tensor(labels).cpu()
    gen = torch.Generator().manual_seed(seed)
    signs = fourier.random_signs((len(unique), n, images.shape[1]), generator=gen)
    wrong = torch.zeros(len(unique), n, dtype=torch.bool)
    total = len(unique) * n
    key = f"{partial_key}|{size}|{window}|{eps}|{n}|{seed}|per-image"
    first = 0
    if partial is not None and Path(partial).exists():
        try:
            state = torch.load(partial, weights_only=True)
        except Exception:  # a damaged partial file only costs the redone work
            state = {}
        if state.get("key") == key and state["wrong"].shape == wrong.shape:
            first, wrong = int(state["start"]), state["wrong"]
    last_save = time.monotonic()
    for start in progress(
        range(first, total, batch_size),
        desc=desc,
        unit="batch",
        initial=first // batch_size,
        total=math.ceil(total / batch_size),
    ):
        t = torch.arange(start, min(start + batch_size, total))
        f, i = t // n, t % n
        # basis images for the few distinct frequencies of this batch, then one per item
        fu, inv = torch.unique(f, return_inverse=True)
        bases = fourier.fourier_bases(size, unique[fu], device=device)[inv.to(device)]
        x = fourier.fourier_perturb(x_all[i.to(device)], bases, eps, signs[f, i].to(device))
        wrong[f, i] = _predict(classifier, x).cpu() != labels[i]
        if partial is not None and time.monotonic() - last_save > save_every_s:
            atomic_torch_save({"key": key, "start": int(t[-1]) + 1, "wrong": wrong}, partial)
            last_save = time.monotonic()
    if partial is not None:
        Path(partial).unlink(missing_ok=True)
    if outcomes is not None:
        outcomes.update(wrong=wrong.numpy(), index=index.numpy())
    error = (wrong.float().mean(dim=1) * 100).numpy()
    w = fourier.window_frequencies(window).numpy()
    ky, kx = np.meshgrid(w, w, indexing="ij")
    radius = np.hypot(ky, kx)
    return pd.DataFrame(
        {
            "ky": ky.ravel(),
            "kx": kx.ravel(),
            "radius": radius.ravel(),
            "radius_frac": radius.ravel() / (size / 2),
            "error_pct": error[index.numpy().ravel()],
            "n": n,
        }
    )


def radius_fractions(steps: int) -> list[float]:
    """``0, 1/steps, ..., 1`` (fractions of Nyquist) plus sqrt(2), the corner of the spectrum."""
    if steps < 1:
        raise FdbenchError(f"--radii must be at least 1, got {steps}")
    return [i / steps for i in range(steps + 1)] + [math.sqrt(2)]


def bandpass_accuracy(
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    fractions: Sequence[float],
    batch_size: int = 256,
    device=None,
    desc: str = "band-pass",
    outcomes: dict | None = None,
) -> pd.DataFrame:
    """Accuracy on low- and high-pass filtered images for each radius ``r = frac * N/2``.

    Returns ``filter, radius, radius_frac, accuracy_pct, n``; the last fraction (sqrt 2) keeps every
    coefficient in the low-pass image (clean accuracy) and none in the high-pass one. ``outcomes``: a
    dict that receives ``wrong`` (bool ``[rows, n]``, aligned with the returned rows).
    """
    size = images.shape[-1]
    device = torch.device(device) if device is not None else images.device
    rows, wrong_rows = [], []
    for frac in progress(list(fractions), desc=desc, unit="radius"):
        # a hair above frac * N/2 so the corner coefficient counts as inside at frac = sqrt(2)
        radius = frac * size / 2 + 1e-6
        for kind in ("low", "high"):
            wrong = wrong_mask(
                classifier,
                images,
                labels,
                batch_size=batch_size,
                device=device,
                transform=lambda x, r=radius, k=kind: fourier.band_pass(x, r, k),
            )
            wrong_rows.append(wrong.numpy())
            rows.append(
                {
                    "filter": kind,
                    "radius": frac * size / 2,
                    "radius_frac": frac,
                    "accuracy_pct": 100 * (1 - int(wrong.sum()) / max(1, len(images))),
                    "n": len(images),
                }
            )
    if outcomes is not None:
        outcomes["wrong"] = np.stack(wrong_rows) if wrong_rows else np.zeros((0, len(images)), dtype=bool)
    return pd.DataFrame(rows)


def corruption_spectra(
    images: torch.Tensor,
    corrupt_fn: Callable,
    corruption_names: Sequence[str],
    *,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    desc: str = "spectra",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Radial power spectra of ``corrupt_fn(x, name, severity) - x`` over ``images`` (float [0,1]).

    Returns ``(spectra, centroids)``: ``spectra`` has ``corruption, severity, radius, radius_frac,
    mean_power, total_power``; ``centroids`` has ``corruption, severity, centroid, centroid_frac,
    energy`` (mean squared L2 norm of the difference per image and channel).
    """
    clean = _as_float01(images, "cpu")
    size = clean.shape[-1]
    spec_rows, cent_rows = [], []
    cells = [(c, s) for c in corruption_names for s in severities]
    for name, sev in progress(cells, desc=desc, unit="cell"):
        gen = torch.Generator().manual_seed(seed)
        out = corrupt_fn(clean.clone(), name, sev, generator=gen)
        out = to_float01(out)
        delta = out.cpu() - clean
        radius, mean_power, total_power = fourier.radial_power_spectrum(delta)
        centroid = fourier.spectral_centroid(delta)
        for r, mp, tp in zip(radius.tolist(), mean_power.tolist(), total_power.tolist()):
            spec_rows.append(
                {
                    "corruption": name,
                    "severity": sev,
                    "radius": r,
                    "radius_frac": r / (size / 2),
                    "mean_power": mp,
                    "total_power": tp,
                }
            )
        cent_rows.append(
            {
                "corruption": name,
                "severity": sev,
                "centroid": centroid,
                "centroid_frac": centroid / (size / 2),
                "energy": float(total_power.sum()),
            }
        )
    return pd.DataFrame(spec_rows), pd.DataFrame(cent_rows)


# ---- summary numbers ----------------------------------------------------------------------------


def heatmap_summary(df: pd.DataFrame, clean_error_pct: float, size: int) -> dict[str, float]:
    """Mean / low-band / high-band error and the error-increase-weighted frequency (module docstring)."""
    window = int(df["kx"].nunique())
    low = df["radius"] < window / 4
    excess = (df["error_pct"] - clean_error_pct).clip(lower=0)
    centroid = float((excess * df["radius"]).sum() / excess.sum() / (size / 2)) if excess.sum() > 0 else math.nan
    return {
        "heatmap_mean_error_pct": float(df["error_pct"].mean()),
        "heatmap_low_error_pct": float(df.loc[low, "error_pct"].mean()) if low.any() else math.nan,
        "heatmap_high_error_pct": float(df.loc[~low, "error_pct"].mean()) if (~low).any() else math.nan,
        "heatmap_centroid_frac": centroid,
    }


def crossing_radius(df: pd.DataFrame) -> float:
    """Smallest radius fraction where low-pass accuracy >= high-pass accuracy (interpolated), NaN if never."""
    low = df[df["filter"] == "low"].set_index("radius_frac")["accuracy_pct"].sort_index()
    high = df[df["filter"] == "high"].set_index("radius_frac")["accuracy_pct"].sort_index()
    gap = (low - high).dropna()
    xs, ys = gap.index.to_numpy(float), gap.to_numpy(float)
    for j in range(len(xs)):
        if ys[j] >= 0:
            if j == 0:
                return float(xs[0])
            # linear interpolation of the sign change between grid points j-1 and j
            return float(xs[j - 1] + (xs[j] - xs[j - 1]) * (-ys[j - 1]) / (ys[j] - ys[j - 1]))
    return math.nan


def bandpass_auc(df: pd.DataFrame, kind: str) -> float:
    """Mean accuracy (%) of one curve over radius fractions 0..1 (trapezoid rule)."""
    part = df[(df["filter"] == kind) & (df["radius_frac"] <= 1 + 1e-9)].sort_values("radius_frac")
    x, y = part["radius_frac"].to_numpy(float), part["accuracy_pct"].to_numpy(float)
    if len(x) < 2:
        return float(y.mean()) if len(y) else math.nan
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def read_results(path: str | Path) -> pd.DataFrame:
    """An eval-corruptions ``results.csv`` (top1 as fractions), checked for the needed columns."""
    path = Path(path)
    if not path.is_file():
        raise FdbenchError(f"results file not found: {path} (pass the results.csv of `fdbench eval-corruptions`)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise FdbenchError(f"cannot read {path} as CSV ({str(err).splitlines()[0]})") from None
    check_results(df, path)
    return df


def _results_protocol(df: pd.DataFrame) -> pd.DataFrame:
    protocols = list(dict.fromkeys(df["protocol"].astype(str)))
    chosen = "linear" if "linear" in protocols else protocols[0]
    return df[df["protocol"].astype(str) == chosen]


def robustness_table(results: pd.DataFrame, centroids: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and corruption: accuracy drop (pp, clean - mean over severities) and the
    corruption's spectral centroid (fraction of Nyquist, mean over the same severities)."""
    res = _results_protocol(results)
    rows = []
    for ckpt, part in res.groupby("checkpoint", sort=False):
        clean = part[part["corruption"] == CLEAN]["top1"]
        if clean.empty:
            continue
        clean_top1 = float(clean.mean())
        for name, cells in part[part["corruption"] != CLEAN].groupby("corruption", sort=False):
            cent = centroids[(centroids["corruption"] == name) & centroids["severity"].isin(cells["severity"])]
            if cent.empty:
                continue
            rows.append(
                {
                    "checkpoint": str(ckpt),
                    "corruption": name,
                    "centroid_frac": float(cent["centroid_frac"].mean()),
                    "top1_pct": 100 * float(cells["top1"].mean()),
                    "clean_top1_pct": 100 * clean_top1,
                    "drop_pp": 100 * (clean_top1 - float(cells["top1"].mean())),
                }
            )
    return pd.DataFrame(
        rows, columns=["checkpoint", "corruption", "centroid_frac", "top1_pct", "clean_top1_pct", "drop_pp"]
    )


def group_accuracy(results: pd.DataFrame, keys: Sequence[str]) -> dict[str, float]:
    """Noise-group and blur-group mean top-1 (%) of the results rows whose checkpoint is one of ``keys``
    (eval-corruptions labels its rows like :func:`checkpoint_labels`)."""
    res = _results_protocol(results)
    part = res[res["checkpoint"].astype(str).isin([str(k) for k in keys])]
    if part.empty:
        return {}
    out = {
        f"{g}_top1_pct": 100 * float(part[part["corruption"].isin(GROUPS[g])]["top1"].mean()) for g in ("noise", "blur")
    }
    out["noise_minus_blur_pp"] = out["noise_top1_pct"] - out["blur_top1_pct"]
    return out


def cell_outcomes(df: pd.DataFrame, kept: dict) -> np.ndarray:
    """``[window cells, n]`` outcomes in the heat-map frame's row order (mirror pairs shown twice)."""
    return kept["wrong"][kept["index"].ravel()]


def comparison_pair(infos: dict[str, dict], labels: Sequence[str]) -> tuple[str, str]:
    """(A, B) for the difference map: the standard curriculum ("none") as A and another as B when the
    checkpoints record their curricula, else the first two."""
    base = [l for l in labels if infos.get(l, {}).get("curriculum", "").lower() in ("none", "standard", "dinov2")]
    other = [l for l in labels if l not in base]
    if base and other:
        return base[0], other[0]
    return labels[0], labels[1]


def comparison_frame(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Two heat maps on the same window joined cell by cell, with ``diff = error_b - error_a`` (pp)."""
    merged = a[["ky", "kx", "radius_frac", "error_pct"]].merge(
        b[["ky", "kx", "error_pct"]], on=["ky", "kx"], suffixes=("_a", "_b")
    )
    merged = merged.rename(columns={"error_pct_a": "error_a", "error_pct_b": "error_b"})
    merged["diff"] = merged["error_b"] - merged["error_a"]
    return merged
