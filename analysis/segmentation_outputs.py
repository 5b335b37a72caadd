"""eval-segmentation's stored cells and the files written from them.

A finished cell is ``OUT/cells/<checkpoint>/<corruption>-<severity>.npz``: per val image and class,
the intersection, label and prediction pixel counts (``analysis.segmentation_probe.image_counts``),
read back without pickle. Every table is recomputed from these files, so a resumed run writes the
same tables as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.metrics import CLEAN
from analysis.resume_checks import refuse_other_results
from analysis.segmentation_probe import scores
from analysis.stats import LEVEL, RESAMPLES, resample_weights, verdict
from fdbench.errors import FdbenchError
from fdbench.io import atomic_open, atomic_write_csv, atomic_write_json, json_safe

RESULT_COLUMNS = ["checkpoint", "kind", "corruption", "severity", "labels", "images", "miou", "pixel_acc", "mean_acc"]
SUMMARY_COLUMNS = [
    "checkpoint", "kind", "clean_miou", "clean_pixel_acc", "corrupted_miou", "corrupted_pixel_acc", "corrupted_cells",
]  # fmt: skip
SETTINGS = "settings.json"


def cell_path(out: Path, label: str, corruption: str, severity: int) -> Path:
    return Path(out) / "cells" / label / f"{corruption}-{severity}.npz"


def write_cell(path: Path, counts: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **counts)
    with atomic_open(path, "wb") as fh:
        fh.write(buffer.getvalue())


def read_cell(path: Path, announce=None) -> dict[str, np.ndarray] | None:
    """A finished cell's per-image counts, or None when absent or damaged (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            counts = {k: z[k] for k in ("inter", "label", "pred")}
        shapes = {v.shape for v in counts.values()}
        if len(shapes) != 1 or counts["inter"].ndim != 2:
            raise ValueError("arrays of different shapes")
        return counts
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: recompute the cell
        if announce:
            announce(f"warning: the finished cell {path} is damaged ({type(err).__name__}); recomputing it")
        path.unlink(missing_ok=True)
        return None


def read_settings(out: Path, settings: dict) -> dict:
    """Refuse to resume in ``out`` when its finished cells were computed with other settings; the
    checksums of the checkpoints evaluated there before."""
    previous = Path(out) / SETTINGS
    if not previous.exists():
        return {}
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError) as err:
        raise FdbenchError(f"cannot resume from {out}: {previous} is unreadable ({err}); use --overwrite") from None
    keys = [k for k in settings if k != "checkpoints"]
    refuse_other_results(
        out,
        old,
        {k: json_safe(settings[k]) for k in keys},
        keys,
        old.get("checkpoints") or {},
        settings["checkpoints"],
        what="segmentation results",
    )
    return dict(old.get("checkpoints") or {})


def _rows(out: Path, info: dict, cells, classes, geometric):
    results, per_class = [], []
    for label, meta in info.items():
        for corruption, severity in cells:
            counts = read_cell(cell_path(out, label, corruption, severity))
            if counts is None:
                continue
            s = scores(*(counts[k].sum(0) for k in ("inter", "label", "pred")))
            results.append(
                {
                    "checkpoint": label,
                    "kind": meta["kind"],
                    "corruption": corruption,
                    "severity": severity,
                    "labels": "unwarped" if corruption in geometric else "unchanged",
                    "images": len(counts["inter"]),
                    "miou": float(s["miou"]),
                    "pixel_acc": float(s["pixel_acc"]),
                    "mean_acc": float(s["mean_acc"]),
                }
            )
            per_class += [
                {"checkpoint": label, "corruption": corruption, "severity": severity, "class_index": i,
                 "class": name, "iou": float(s["iou"][i])}
                for i, name in enumerate(classes)
            ]  # fmt: skip
    return pd.DataFrame(results, columns=RESULT_COLUMNS), pd.DataFrame(per_class)


def _summary(results: pd.DataFrame, info: dict) -> pd.DataFrame:
    rows = []
    for label, meta in info.items():
        mine = results[results["checkpoint"] == label]
        clean, corrupted = mine[mine["corruption"] == CLEAN], mine[mine["corruption"] != CLEAN]
        rows.append(
            {
                "checkpoint": label,
                "kind": meta["kind"],
                "clean_miou": float(clean["miou"].iloc[0]) if len(clean) else np.nan,
                "clean_pixel_acc": float(clean["pixel_acc"].iloc[0]) if len(clean) else np.nan,
                "corrupted_miou": float(corrupted["miou"].mean()) if len(corrupted) else np.nan,
                "corrupted_pixel_acc": float(corrupted["pixel_acc"].mean()) if len(corrupted) else np.nan,
                "corrupted_cells": len(corrupted),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def write_outputs(out: Path, *, entries_info: dict, cells, classes, settings: dict, geometric) -> dict:
    """results.csv, per_class.csv, summary.csv, summary.json and settings.json from the stored cells."""
    out = Path(out)
    results, per_class = _rows(out, entries_info, cells, classes, geometric)
    summary = _summary(results, entries_info)
    files = {name: out / name for name in ("results.csv", "per_class.csv", "summary.csv", "summary.json")}
    atomic_write_json(out / SETTINGS, json_safe(settings))
    atomic_write_csv(files["results.csv"], results)
    atomic_write_csv(files["per_class.csv"], per_class)
    atomic_write_csv(files["summary.csv"], summary)
    atomic_write_json(
        files["summary.json"],
        json_safe(
            {
                "settings": settings,
                "classes": list(classes),
                "cells": [list(c) for c in cells],
                "checkpoints": {
                    label: {**meta, **{k: v for k, v in row.items() if k not in ("checkpoint", "kind")}}
                    for label, meta in entries_info.items()
                    for row in summary[summary["checkpoint"] == label].to_dict("records")
                },
            }
        ),
    )
    return {**{k.replace(".", "_"): v for k, v in files.items()}, "results_frame": results, "summary_frame": summary}


def _bootstrap(counts: list[dict], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per resample: mIoU and pixel accuracy of each cell, averaged over the cells given."""
    miou, acc = [], []
    for c in counts:
        s = scores(*(weights @ c[k] for k in ("inter", "label", "pred")))
        miou.append(s["miou"])
        acc.append(s["pixel_acc"])
    return {"miou": np.mean(miou, axis=0), "pixel_acc": np.mean(acc, axis=0)}


def write_differences(out: Path, info: dict, cells, num_classes: int, *, seed: int = 0):
    """differences.csv: B - A for clean mIoU, clean pixel accuracy and the mean corrupted mIoU, with
    paired-bootstrap 95% intervals (the same resampled val images for A and B and for every cell);
    A the random-init floor and the first checkpoint, B every other checkpoint."""
    out = Path(out)
    pretrained = [lb for lb, m in info.items() if m["kind"] == "pretrained"]
    floors = [lb for lb, m in info.items() if m["kind"] == "floor"]
    pairs = [(a, b) for a in floors for b in pretrained] + [(pretrained[0], b) for b in pretrained[1:]]
    stored = {lb: {c: read_cell(cell_path(out, lb, *c)) for c in cells} for lb in {x for pair in pairs for x in pair}}
    rows = []
    groups = {"clean": [(CLEAN, 0)], "corrupted (mean)": [c for c in cells if c[0] != CLEAN]}
    for a, b in pairs:
        for group, members in groups.items():
            members = [c for c in members if stored[a][c] is not None and stored[b][c] is not None]
            if not members:
                continue
            weights = resample_weights(len(stored[a][members[0]]["inter"]), RESAMPLES, seed)
            point = {x: _bootstrap([stored[x][c] for c in members], np.ones((1, weights.shape[1]))) for x in (a, b)}
            boot = {x: _bootstrap([stored[x][c] for c in members], weights) for x in (a, b)}
            for metric in ("miou", "pixel_acc") if group == "clean" else ("miou",):
                diff = boot[b][metric] - boot[a][metric]
                lo, hi = np.nanpercentile(diff, [(1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100])
                rows.append(
                    {
                        "a": a, "b": b, "metric": f"{group} {metric}", "cells": len(members),
                        "a_value": float(point[a][metric][0]), "b_value": float(point[b][metric][0]),
                        "difference": float(point[b][metric][0] - point[a][metric][0]),
                        "ci_low": float(lo), "ci_high": float(hi), "verdict": verdict(lo, hi, "accuracy"),
                    }
                )  # fmt: skip
    frame = pd.DataFrame(rows)
    path = out / "differences.csv"
    atomic_write_csv(path, frame)
    return path, frame
