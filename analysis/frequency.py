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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis import fourier
from analysis import frequency_stats as fstats
from analysis.frequency_analyses import (
    bandpass_accuracy,
    bandpass_auc,
    comparison_frame,
    comparison_pair,
    corruption_spectra,
    crossing_radius,
    fourier_heatmap,
    group_accuracy,
    heatmap_summary,
    radius_fractions,
    read_results,
    robustness_table,
    wrong_mask,
)
from analysis.frequency_figures import draw_figures
from analysis.frequency_resume import read_finished, refuse_changed, settings_diff
from analysis.frequency_models import Model, checkpoint_labels, eval_setup, find_checkpoints, stratified
from analysis.frequency_models import load_model as _load_model  # a module global: tests stub it
from analysis.evaluate import default_corrupt_fn
from fdbench.checkpoint import load_backbone
from fdbench.data import dataset_resolution, load_split_tensor, open_dataset
from fdbench.device import resolve_device, seed_everything
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json

__all__ = [  # the analyses are re-exported: ``frequency.fourier_heatmap`` etc. stay the public names
    "ANALYSES",
    "FrequencyConfig",
    "FrequencyReport",
    "bandpass_accuracy",
    "bandpass_auc",
    "comparison_frame",
    "comparison_pair",
    "corruption_spectra",
    "crossing_radius",
    "fourier_heatmap",
    "group_accuracy",
    "heatmap_summary",
    "radius_fractions",
    "read_results",
    "robustness_table",
    "run_frequency_analysis",
    "wrong_mask",
]

ANALYSES = ("heatmap", "bandpass", "spectra")
PROBES = ("linear", "knn")
DEFAULT_RESULTS = Path("evals/corruptions/results.csv")  # where `fdbench eval-corruptions` writes by default


@dataclass
class FrequencyConfig:
    """Options of ``fdbench frequency-analysis`` (the CLI mirrors these names)."""

    checkpoints: list[str] = field(default_factory=list)  # empty: runs/*/final.pt
    data: str | None = None  # dataset root; default: each checkpoint's training data
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    eps: float | None = None  # default: fourier.default_eps(image size)
    window: int | None = None  # default: fourier.default_window(image size)
    # heat-map images per frequency (class-balanced val subset). 400: the ring curve's 95% interval is
    # about +-3 points on the embedded data (measured +-9.7 at 32 images, +-3.8 at 256: 1/sqrt(n))
    n_images: int = 400
    spectra_images: int = 32  # corruption-spectra images (a mean power spectrum: few images suffice)
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


# ---- the runner ----------------------------------------------------------------------------------


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
    for name in ("n_images", "spectra_images", "bandpass_images", "batch_size"):
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
            refuse_changed(
                out / label / f"{analysis}.json", _analysis_params(analysis, config, path), analysis, config.overwrite
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
            if not config.overwrite and csv.exists() and npz.exists() and settings_diff(meta, params, ignore=()) == []:
                reused = read_finished(csv, meta, npz, announce)
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
            info.update(fstats.heatmap_intervals(heatmaps[label], outcomes[("heatmap", label)], info, config.seed))
        if label in bandpasses:
            bp = bandpasses[label]
            info.update(
                {
                    "crossing_frac": crossing_radius(bp),
                    "lowpass_auc_pct": bandpass_auc(bp, "low"),
                    "highpass_auc_pct": bandpass_auc(bp, "high"),
                }
            )
            lo_hi, bandpasses[label] = fstats.bandpass_intervals(bp, outcomes[("bandpass", label)], config.seed)
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
    analysis: str, model: Model, config: FrequencyConfig, device, label: str, params: dict, partial: Path | None = None
):
    n = config.n_images if analysis == "heatmap" else config.bandpass_images
    idx = stratified(model.val_labels, n, config.seed)
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


def _spectra(config, out, source, device, announce, corrupt_fn, corruption_names, report):
    """Corruption spectra on the analysis images (one dataset per run; reused when unchanged)."""
    if corrupt_fn is None or corruption_names is None:
        from corruptions import names

        corrupt_fn = corrupt_fn or default_corrupt_fn()
        corruption_names = corruption_names or names("all")
    if source is not None:
        root, size, resize = eval_setup(load_backbone(source), config, announce)
    else:
        root = config.data
        native = dataset_resolution(root)
        size, resize = native or 224, None
    params = {
        "data": str(root) if root else None,
        "size": size,
        "n_images": config.spectra_images,
        "seed": config.seed,
        "corruptions": list(corruption_names),
    }
    csv, cent_csv, meta = out / "spectra.csv", out / "spectra_centroids.csv", out / "spectra.json"
    refuse_changed(meta, params, "corruption spectra", config.overwrite)
    if not config.overwrite and csv.exists() and cent_csv.exists() and settings_diff(meta, params, ignore=()) == []:
        try:
            frames = pd.read_csv(csv), pd.read_csv(cent_csv)
        except (OSError, ValueError) as err:
            announce(f"warning: {csv} or {cent_csv} is damaged ({str(err).splitlines()[0][:120]}); recomputing")
        else:
            announce(f"spectra already done ({csv}), reusing them")
            return frames

    num_classes = len(open_dataset(root, "val").classes)
    x, y, _ = load_split_tensor(
        root,
        "val",
        size,
        resize=resize,
        max_per_class=math.ceil(config.spectra_images / num_classes),
        desc="spectra: val",
    )
    idx = stratified(y, config.spectra_images, config.seed)
    announce(
        f"corruption spectra: {len(corruption_names)} corruptions x 5 severities on {len(idx)} images at {size} px"
    )
    spectra, centroids = corruption_spectra(x[idx], corrupt_fn, corruption_names, seed=config.seed)
    atomic_write_csv(csv, spectra)
    atomic_write_csv(cent_csv, centroids)
    atomic_write_json(meta, {"params": params})
    report.files += [csv, cent_csv]
    return pd.read_csv(csv), pd.read_csv(cent_csv)  # as a re-run reads them (same digits either way)
