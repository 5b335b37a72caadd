"""``frequency-analysis``: Fourier heat maps, band-pass accuracy, corruption spectra, bias numbers.

Three analyses (definitions in :mod:`analysis.fourier`), each resumable per checkpoint:

- ``heatmap``: error rate of a classifier under ``x + eps * r_c * U(k)`` for every frequency ``k`` of
  a centred window (Yin et al. 2019). Each mirror pair is evaluated once and shown twice.
- ``bandpass``: accuracy on low-pass and high-pass filtered images as the radius r sweeps from 0 to
  the spectrum's corner (Wang et al. 2020).
- ``spectra``: radially averaged power spectrum of ``corrupted - clean`` for every corruption and
  severity (needs no checkpoint), and its spectral centroid; joined with an eval-corruptions
  ``results.csv`` when given, it places each corruption's accuracy drop on the frequency axis.

The classifier of a checkpoint is its frozen backbone (:class:`fdbench.features.FrozenEncoder`) plus a
probe fitted on clean training features (linear by default, kNN as an option). The analysis
functions take any callable ``images float [B,3,N,N] in [0,1] -> logits [B,C] or labels [B]``, so
they work for any model.

Frequency-bias summary numbers (``summary.csv``; radii as fractions of Nyquist, N/2 cycles/image):

- ``heatmap_mean_error_pct``: mean error rate over the heat-map window.
- ``heatmap_low_error_pct`` / ``heatmap_high_error_pct``: mean error over window cells with
  ``|k| < W/4`` / ``|k| >= W/4`` (W = window width; for the full spectrum W/4 = Nyquist/2).
- ``heatmap_centroid_frac``: where the model is sensitive,
  ``sum_k d(k) |k| / sum_k d(k) / (N/2)`` with ``d(k) = max(error(k) - clean error, 0)``.
- ``crossing_frac``: the smallest radius at which low-pass accuracy reaches high-pass accuracy
  (linear interpolation on the radius grid). Larger = the model needs more high frequencies.
- ``lowpass_auc_pct`` / ``highpass_auc_pct``: mean accuracy over the radius grid 0..1 (trapezoid).
- ``noise_top1_pct`` / ``blur_top1_pct`` / ``noise_minus_blur_pp``: mean top-1 over the common noise
  (gaussian, shot, impulse) and blur (defocus, glass, motion, zoom) corruptions and severities, read
  from ``--results`` (linear-probe rows).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis import fourier
from analysis import frequency_stats as fstats
from analysis import plots
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json, progress

ANALYSES = ("heatmap", "bandpass", "spectra")
PROBES = ("linear", "knn")
DEFAULT_RESULTS = Path("evals/corruptions/results.csv")  # where `fdbench eval-corruptions` writes by default
Classifier = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FrequencyConfig:
    """Options of ``fdbench frequency-analysis`` (the CLI mirrors these names)."""

    checkpoints: list[str] = field(default_factory=list)  # empty: runs/*/final.pt
    data: str | None = None  # dataset root; default: each checkpoint's training data
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    eps: float | None = None  # default: fourier.default_eps(image size)
    window: int | None = None  # default: fourier.default_window(image size)
    n_images: int = 32  # heat-map and spectra images (class-balanced val subset)
    bandpass_images: int = 256  # band-pass images (class-balanced val subset)
    radii: int = 16  # band-pass radius steps between 0 and Nyquist
    probe: str = "linear"  # linear | knn
    results: str | None = None  # eval-corruptions results.csv (default: DEFAULT_RESULTS if present)
    severity: int = 3  # severity drawn in the spectra figure
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    out: str = "evals/frequency"
    runs: str = "runs"  # where to look for checkpoints when none are given
    overwrite: bool = False  # recompute (and replace) results that --out holds with other settings


@dataclass
class FrequencyReport:
    out: Path
    summary: pd.DataFrame
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure (also saved as PNG + PDF)
    files: list[Path] = field(default_factory=list)


# ---- analyses on any classifier -----------------------------------------------------------------


def _predict(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    out = classifier(images)
    return out.argmax(dim=1) if out.ndim == 2 else out


def _as_float01(images: torch.Tensor, device) -> torch.Tensor:
    images = images.to(device)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


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


def error_rate(
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    transform: Callable | None = None,
    device=None,
) -> float:
    """Top-1 error (fraction) of ``classifier`` on ``images`` (optionally through ``transform``)."""
    wrong = wrong_mask(classifier, images, labels, batch_size=batch_size, transform=transform, device=device)
    return int(wrong.sum()) / max(1, len(images))


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
    import time

    from fdbench.io import atomic_torch_save

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
        out = out.float().div(255) if out.dtype == torch.uint8 else out.float()
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
    from analysis.metrics import check_results

    check_results(df, path)
    return df


def _results_protocol(df: pd.DataFrame) -> pd.DataFrame:
    protocols = list(dict.fromkeys(df["protocol"].astype(str)))
    chosen = "linear" if "linear" in protocols else protocols[0]
    return df[df["protocol"].astype(str) == chosen]


def robustness_table(results: pd.DataFrame, centroids: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and corruption: accuracy drop (pp, clean - mean over severities) and the
    corruption's spectral centroid (fraction of Nyquist, mean over the same severities)."""
    from analysis.metrics import CLEAN

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
    from analysis.metrics import GROUPS

    res = _results_protocol(results)
    part = res[res["checkpoint"].astype(str).isin([str(k) for k in keys])]
    if part.empty:
        return {}
    out = {
        f"{g}_top1_pct": 100 * float(part[part["corruption"].isin(GROUPS[g])]["top1"].mean()) for g in ("noise", "blur")
    }
    out["noise_minus_blur_pp"] = out["noise_top1_pct"] - out["blur_top1_pct"]
    return out


# ---- checkpoints ---------------------------------------------------------------------------------


def find_checkpoints(paths: Sequence[str], runs: str | Path = "runs", announce=None) -> list[Path]:
    """The given checkpoint files, or every ``<runs>/*/final.pt`` when none are given."""
    if paths:
        return [Path(p) for p in paths]
    found = sorted(Path(runs).glob("*/final.pt"))
    if not found:
        raise FdbenchError(
            f"no checkpoints given and none found under {runs}/*/final.pt: train some with "
            f"`fdbench pretrain` first, or pass checkpoint files"
        )
    if announce:
        announce(f"analysing {len(found)} checkpoint(s) found under {runs}/: " + ", ".join(str(p) for p in found))
    return found


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """The labels eval-corruptions gives the same files (``runs/<name>/final.pt`` -> ``<name>``), so
    its results.csv rows match these checkpoints."""
    from analysis.evaluate import checkpoint_labels as eval_labels

    return eval_labels(paths)


def _data_root(config: "FrequencyConfig", meta: dict, announce) -> str | None:
    """``--data``, else the checkpoint's recorded training data when it is here, else the embedded set."""
    from fdbench.data import check_fingerprint

    recorded = (meta.get("data") or {}).get("root")
    check_fingerprint(meta.get("data"), config.data or recorded, announce)  # another dataset at that path
    if config.data is not None:
        return config.data
    if recorded and (Path(recorded).exists() or re.match(r"^(cifar10|cifar100|stl10):", str(recorded))):
        return str(recorded)
    if recorded:
        announce(f"the checkpoint's training data {recorded} is not here; using the embedded dataset")
    return None


@dataclass
class _Model:
    """A checkpoint turned into a classifier, with the evaluation images it is analysed on."""

    classifier: Classifier
    size: int
    root: str
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    curriculum: str


def _stratified(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` samples taken round-robin over classes (each class in a seeded random order)."""
    gen = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    per_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in per_class]
    order = [int(idx[j]) for j in range(max(len(i) for i in per_class)) for idx in per_class if j < len(idx)]
    return torch.tensor(order[:n], dtype=torch.long)


def _eval_setup(loaded, config: FrequencyConfig, announce=lambda m: None) -> tuple[str | None, int, int | None]:
    """(data root, evaluation size, resize) of a loaded checkpoint: ``--data`` or its training data, at
    the dataset's native size (every pixel kept) or the training size, a multiple of the patch."""
    from fdbench.data import dataset_resolution
    from fdbench.features import eval_image_size

    root = _data_root(config, loaded.meta, announce)
    native = dataset_resolution(root)
    trained = (loaded.meta.get("data") or {}).get("image_size") or loaded.config.img_size
    size = eval_image_size(trained, native, loaded.config.patch_size)
    return root, size, (size if native else None)


def _load_model(path: Path, config: FrequencyConfig, device: torch.device, label: str, announce) -> _Model:
    from fdbench.checkpoint import load_backbone
    from fdbench.data import check_same_classes, eval_transform, load_split_tensor, open_dataset
    from fdbench.features import FrozenEncoder
    from analysis.evaluate import dataset_features
    from analysis.probes import fit_linear_probe, knn_probe

    loaded = load_backbone(path, map_location=device)
    root, size, resize = _eval_setup(loaded, config, announce)
    encoder = FrozenEncoder(loaded.model).to(device)

    train = open_dataset(root, "train", eval_transform(size, resize))
    check_same_classes(list(train.classes), list(open_dataset(root, "val").classes), root)
    feats, labels = dataset_features(encoder, train, batch_size=config.batch_size, desc=f"{label}: train features")
    num_classes = len(train.classes)
    if config.probe == "linear":
        probe = fit_linear_probe(feats, labels, seed=config.seed, num_classes=num_classes)
    else:
        probe = knn_probe(feats, labels, num_classes=num_classes)
    probe.to(device)

    need = max(config.n_images, config.bandpass_images)
    val_x, val_y, _ = load_split_tensor(
        root, "val", size, resize=resize, max_per_class=math.ceil(need / num_classes), desc=f"{label}: val"
    )
    announce(
        f"{label}: {loaded.config.arch}/{loaded.config.patch_size} at {size} px, {config.probe} probe "
        f"on {len(feats)} train images, data {root or 'embedded synthetic dataset'}"
    )

    def classify(images: torch.Tensor) -> torch.Tensor:
        return probe.logits(encoder(images))

    curriculum = loaded.meta.get("curriculum")
    if isinstance(curriculum, dict):
        curriculum = curriculum.get("name") or json.dumps(curriculum, sort_keys=True)
    return _Model(classify, size, str(root) if root else "", val_x, val_y, num_classes, str(curriculum or ""))


# ---- the runner ----------------------------------------------------------------------------------


def _settings_diff(meta_path: Path, params: dict, ignore: tuple[str, ...] = ("mtime",)) -> list[str] | None:
    """How the settings recorded in ``meta_path`` differ from ``params`` (``"key: old -> new"``), the
    checkpoint's mtime aside (``ignore``); None when nothing readable is recorded (then the work is simply done).

    ``eps`` and ``window`` left at their defaults compare by the value they stood for (recorded in
    the result's ``info``), so spelling out the default is not a change."""
    try:
        saved = json.loads(meta_path.read_text())
        before, info = dict(saved["params"]), dict(saved.get("info") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    now = json.loads(json.dumps(params))
    defaults = {"eps": fourier.default_eps, "window": fourier.default_window}
    diffs = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if key in ignore or old == new:
            continue
        if key in defaults and "image_size" in info and (old is None or new is None):
            old = info.get(key, old)
            new = new if new is not None else defaults[key](int(info["image_size"]))
            if old == new:
                continue
        diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def _read_finished(csv: Path, meta: Path, npz: Path, announce):
    """A finished analysis' (table, meta, outcomes), or None (with a message) when a file of it is
    damaged: then it is recomputed, never a traceback."""
    try:
        df, saved = pd.read_csv(csv), json.loads(meta.read_text())
        kept = fstats.load_outcomes(npz)
        if not isinstance(saved, dict) or not isinstance(saved.get("info"), dict) or df.empty:
            raise ValueError("incomplete")
    except (OSError, ValueError, FdbenchError) as err:
        announce(
            f"warning: the finished result {csv.parent} is damaged ({str(err).splitlines()[0][:120]}); recomputing"
        )
        return None
    return df, saved, kept


def _refuse_changed(meta_path: Path, params: dict, what: str, config: "FrequencyConfig") -> None:
    """Like eval-corruptions: results of other settings are not silently replaced."""
    diffs = _settings_diff(meta_path, params)
    if diffs and not config.overwrite:
        raise FdbenchError(
            f"{meta_path.parent} holds a {what} computed with other settings ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); use another --out, or --overwrite to replace it"
        )


def _validate(config: FrequencyConfig) -> None:
    bad = [a for a in config.analyses if a not in ANALYSES]
    if bad or not config.analyses:
        raise FdbenchError(f"unknown analysis {', '.join(bad) or '(none)'}: choose from {', '.join(ANALYSES)}")
    if config.probe not in PROBES:
        raise FdbenchError(f"unknown probe {config.probe!r}: use {' or '.join(PROBES)}")
    if config.eps is not None and config.eps <= 0:
        raise FdbenchError(f"--eps must be positive, got {config.eps}")
    if config.window is not None and config.window < 1:
        raise FdbenchError(f"--window must be at least 1, got {config.window}")
    for name in ("n_images", "bandpass_images", "batch_size"):
        if getattr(config, name) < 1:
            raise FdbenchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.severity not in (1, 2, 3, 4, 5):
        raise FdbenchError(f"--severity must be 1..5, got {config.severity}")
    radius_fractions(config.radii)


def run_frequency_analysis(
    config: FrequencyConfig,
    announce: Callable[[str], None] = lambda m: None,
    corrupt_fn: Callable | None = None,
    corruption_names: Sequence[str] | None = None,
) -> FrequencyReport:
    """Run the requested analyses for every checkpoint, write CSVs + figures under ``config.out``.

    Work already done with the same parameters (per analysis and checkpoint, recorded in a JSON beside
    each CSV) is reused. ``corrupt_fn``/``corruption_names`` default to the ``corruptions`` package.
    """
    from fdbench.device import resolve_device, seed_everything

    _validate(config)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    out = Path(config.out)
    needs_model = bool({"heatmap", "bandpass"} & set(config.analyses))
    results_path = config.results
    if results_path is None and DEFAULT_RESULTS.is_file():
        results_path = str(DEFAULT_RESULTS)
        announce(f"using eval-corruptions results from {results_path} (pass --results to choose another)")
    results = read_results(results_path) if results_path else None
    if needs_model or config.checkpoints:
        paths = find_checkpoints(config.checkpoints, config.runs, announce)
    else:
        paths = []
    labels = checkpoint_labels(paths)
    for path, label in zip(paths, labels):  # before any work: refuse rather than replace other settings
        for analysis in [a for a in ("heatmap", "bandpass") if a in config.analyses]:
            _refuse_changed(
                out / label / f"{analysis}.json", _analysis_params(analysis, config, path), analysis, config
            )
    report = FrequencyReport(out=out, summary=pd.DataFrame())
    heatmaps, bandpasses, rows, infos, outcomes = {}, {}, [], {}, {}
    spectra_source: Path | None = None  # the checkpoint whose data and size the spectra use

    for path, label in zip(paths, labels):
        folder = out / label
        model = None
        info = {"checkpoint": label, "path": str(path)}
        for analysis in [a for a in ("heatmap", "bandpass") if a in config.analyses]:
            csv, meta = folder / f"{analysis}.csv", folder / f"{analysis}.json"
            npz = folder / f"{analysis}_outcomes.npz"
            params = _analysis_params(analysis, config, path)
            reused = None
            if not config.overwrite and csv.exists() and npz.exists() and _settings_diff(meta, params, ignore=()) == []:
                reused = _read_finished(csv, meta, npz, announce)
                if reused is not None:
                    announce(f"{label}: {analysis} already done ({csv}), reusing it")
            if reused is not None:
                df, saved, kept = reused
            else:
                if model is None:
                    model = _load_model(path, config, device, label, announce)
                df, saved, kept = _run_one(
                    analysis, model, config, device, label, params, partial=folder / f"{analysis}.partial.pt"
                )
                # the per-image outcomes first: a CSV without them would be taken as finished work
                fstats.save_outcomes(npz, **kept)
                atomic_write_csv(csv, df)
                atomic_write_json(meta, saved)
                report.files += [csv, npz]
                # from here on the files, as a re-run reads them: the summary's digits do not depend on
                # whether this run computed the numbers (float32 tensors) or reused them (CSV, float64)
                df, saved, kept = pd.read_csv(csv), json.loads(meta.read_text()), fstats.load_outcomes(npz)
            info.update(saved["info"])
            (heatmaps if analysis == "heatmap" else bandpasses)[label] = df
            outcomes[(analysis, label)] = kept
        if "spectra" in config.analyses and spectra_source is None:
            spectra_source = path
        infos[label] = info

    spectra = centroids = None
    if "spectra" in config.analyses:
        spectra, centroids = _spectra(
            config, out, spectra_source, device, announce, corrupt_fn, corruption_names, report
        )

    for label in labels:
        info = dict(infos[label])
        if label in heatmaps:
            info.update(heatmap_summary(heatmaps[label], info["heatmap_clean_error_pct"], info["image_size"]))
            info.update(_heatmap_intervals(heatmaps[label], outcomes[("heatmap", label)], info, config.seed))
        if label in bandpasses:
            bp = bandpasses[label]
            info.update(
                {
                    "crossing_frac": crossing_radius(bp),
                    "lowpass_auc_pct": bandpass_auc(bp, "low"),
                    "highpass_auc_pct": bandpass_auc(bp, "high"),
                }
            )
            lo_hi, bandpasses[label] = _bandpass_intervals(bp, outcomes[("bandpass", label)], config.seed)
            info.update(lo_hi)
        if results is not None:
            info.update(group_accuracy(results, [label]))
        rows.append(info)
    report.summary = pd.DataFrame(rows)
    if rows:
        atomic_write_csv(out / "summary.csv", report.summary)
        atomic_write_json(out / "summary.json", {"config": asdict(config), "checkpoints": rows})
        report.files += [out / "summary.csv", out / "summary.json"]

    report.figures = draw_figures(
        out, heatmaps, bandpasses, infos, spectra, centroids, results, config, report.files, outcomes
    )
    return report


def _analysis_params(analysis: str, config: FrequencyConfig, path: Path) -> dict:
    common = {
        "checkpoint": str(Path(path).resolve()),
        "mtime": Path(path).stat().st_mtime if Path(path).exists() else None,
        "data": config.data,
        "probe": config.probe,
        "seed": config.seed,
    }
    if analysis == "heatmap":
        return {**common, "eps": config.eps, "window": config.window, "n_images": config.n_images}
    return {**common, "bandpass_images": config.bandpass_images, "radii": config.radii}


def _run_one(
    analysis: str, model: _Model, config: FrequencyConfig, device, label: str, params: dict, partial: Path | None = None
):
    n = config.n_images if analysis == "heatmap" else config.bandpass_images
    idx = _stratified(model.val_labels, n, config.seed)
    images, labels = model.val_images[idx], model.val_labels[idx]
    clean_wrong = wrong_mask(model.classifier, images, labels, batch_size=config.batch_size, device=device)
    clean_err = 100 * float(clean_wrong.float().mean())
    kept: dict = {}
    info = {
        "image_size": model.size,
        "data_root": model.root,
        "num_classes": model.num_classes,
        "curriculum": model.curriculum,
    }
    if analysis == "heatmap":
        eps = config.eps if config.eps is not None else fourier.default_eps(model.size)
        window = config.window or fourier.default_window(model.size)
        df = fourier_heatmap(
            model.classifier,
            images,
            labels,
            eps=eps,
            window=window,
            batch_size=config.batch_size,
            seed=config.seed,
            device=device,
            desc=f"{label}: heat map",
            partial=partial,
            partial_key=json.dumps(params, sort_keys=True),
            outcomes=kept,
        )
        info.update({"eps": eps, "window": window, "heatmap_images": len(images), "heatmap_clean_error_pct": clean_err})
    else:
        df = bandpass_accuracy(
            model.classifier,
            images,
            labels,
            fractions=radius_fractions(config.radii),
            batch_size=config.batch_size,
            device=device,
            desc=f"{label}: band-pass",
            outcomes=kept,
        )
        info.update({"bandpass_images": len(images), "clean_top1_pct": 100 - clean_err})
    kept.update(clean_wrong=clean_wrong.numpy(), images=idx.numpy())
    return df, {"params": params, "info": info}, kept


def _cell_outcomes(df: pd.DataFrame, kept: dict) -> np.ndarray:
    """``[window cells, n]`` outcomes in the heat-map frame's row order (mirror pairs shown twice)."""
    return kept["wrong"][kept["index"].ravel()]


def _heatmap_intervals(df: pd.DataFrame, kept: dict, info: dict, seed: int) -> dict[str, float]:
    """``<number>_lo`` / ``<number>_hi``: 95% bootstrap intervals (over images) of the heat-map numbers."""
    cells = _cell_outcomes(df, kept)
    weights = fstats.bootstrap_weights(cells.shape[1], seed=seed)
    samples = fstats.heatmap_summary_samples(
        cells, df["radius"].to_numpy(float), kept["clean_wrong"], int(df["kx"].nunique()), info["image_size"], weights
    )
    out = {}
    for name, values in samples.items():
        lo, hi = fstats.interval(values)
        out.update({f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out


def _bandpass_intervals(df: pd.DataFrame, kept: dict, seed: int) -> tuple[dict[str, float], pd.DataFrame]:
    """Bootstrap intervals of crossing radius and AUCs, and the curve with ``accuracy_pct_lo/_hi``."""
    wrong = kept["wrong"]
    weights = fstats.bootstrap_weights(wrong.shape[1], seed=seed)
    df = df.reset_index(drop=True).copy()
    low = df.index[df["filter"] == "low"][np.argsort(df.loc[df["filter"] == "low", "radius_frac"].to_numpy())]
    high = df.index[df["filter"] == "high"][np.argsort(df.loc[df["filter"] == "high", "radius_frac"].to_numpy())]
    samples = fstats.bandpass_samples(df.loc[low, "radius_frac"].to_numpy(float), wrong[low], wrong[high], weights)
    for rows, key in ((low, "low"), (high, "high")):
        lo, hi = fstats.interval(samples[key])
        df.loc[rows, "accuracy_pct_lo"], df.loc[rows, "accuracy_pct_hi"] = lo, hi
    out = {}
    for name in ("crossing_frac", "lowpass_auc_pct", "highpass_auc_pct"):
        lo, hi = fstats.interval(samples[name])
        out.update({f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out, df


def _spectra(config, out, source, device, announce, corrupt_fn, corruption_names, report):
    """Corruption spectra on the analysis images (one dataset per run; reused when unchanged)."""
    from fdbench.data import dataset_resolution, load_split_tensor

    if corrupt_fn is None or corruption_names is None:
        from analysis.evaluate import default_corrupt_fn
        from corruptions import names

        corrupt_fn = corrupt_fn or default_corrupt_fn()
        corruption_names = corruption_names or names("all")
    if source is not None:
        from fdbench.checkpoint import load_backbone

        root, size, resize = _eval_setup(load_backbone(source), config, announce)
    else:
        root = config.data
        native = dataset_resolution(root)
        size, resize = native or 224, None
    params = {
        "data": str(root) if root else None,
        "size": size,
        "n_images": config.n_images,
        "seed": config.seed,
        "corruptions": list(corruption_names),
    }
    csv, cent_csv, meta = out / "spectra.csv", out / "spectra_centroids.csv", out / "spectra.json"
    _refuse_changed(meta, params, "corruption spectra", config)
    if not config.overwrite and csv.exists() and cent_csv.exists() and _settings_diff(meta, params, ignore=()) == []:
        try:
            frames = pd.read_csv(csv), pd.read_csv(cent_csv)
        except (OSError, ValueError) as err:
            announce(f"warning: {csv} or {cent_csv} is damaged ({str(err).splitlines()[0][:120]}); recomputing")
        else:
            announce(f"spectra already done ({csv}), reusing them")
            return frames
    from fdbench.data import open_dataset

    num_classes = len(open_dataset(root, "val").classes)
    x, y, _ = load_split_tensor(
        root, "val", size, resize=resize, max_per_class=math.ceil(config.n_images / num_classes), desc="spectra: val"
    )
    idx = _stratified(y, config.n_images, config.seed)
    announce(
        f"corruption spectra: {len(corruption_names)} corruptions x 5 severities on {len(idx)} images at {size} px"
    )
    spectra, centroids = corruption_spectra(x[idx], corrupt_fn, corruption_names, seed=config.seed)
    atomic_write_csv(csv, spectra)
    atomic_write_csv(cent_csv, centroids)
    atomic_write_json(meta, {"params": params})
    report.files += [csv, cent_csv]
    return pd.read_csv(csv), pd.read_csv(cent_csv)  # as a re-run reads them (same digits either way)


# ---- figures -------------------------------------------------------------------------------------


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
            la, lb = pair
            comp = comparison_frame(heatmaps[la], heatmaps[lb])
            paired = _paired_cells(heatmaps, outcomes, la, lb)
            if paired is not None:
                comp["p_value"] = fstats.mcnemar_p(*paired)
                comp["significant"] = fstats.benjamini_hochberg(comp["p_value"].to_numpy())
            atomic_write_csv(out / "heatmap_comparison.csv", comp)
            files.append(out / "heatmap_comparison.csv")
            emit(
                "heatmap_comparison",
                plots.heatmap_comparison_figure(
                    comp, la, lb, suptitle="Fourier heat maps: error rate under a unit Fourier perturbation"
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


def _paired_cells(heatmaps, outcomes, la: str, lb: str):
    """Both checkpoints' ``[cells, n]`` outcomes when they were measured on the same images, else None."""
    ka, kb = outcomes.get(("heatmap", la)), outcomes.get(("heatmap", lb))
    if (
        ka is None
        or kb is None
        or not np.array_equal(ka["images"], kb["images"])
        or ka["wrong"].shape != kb["wrong"].shape
    ):
        return None
    return _cell_outcomes(heatmaps[la], ka), _cell_outcomes(heatmaps[lb], kb)


def _ring_tables(heatmaps, outcomes, infos, pair, seed: int):
    """(ring curves of every checkpoint, paired ring difference of the pair or None), or None without
    per-image outcomes."""
    frames = []
    for label, df in heatmaps.items():
        kept = outcomes.get(("heatmap", label))
        if kept is None:
            return None
        curve = fstats.ring_curve(
            _cell_outcomes(df, kept), df["radius"].to_numpy(float), infos[label]["image_size"], seed=seed
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
