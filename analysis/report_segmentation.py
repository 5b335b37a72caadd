"""compare's segmentation section: eval-segmentation outputs found beside the runs, as one table.

A folder written by ``fdbench eval-segmentation`` (``summary.json`` with the checkpoints' paths and
checksums, ``summary.csv``, ``differences.csv``) is searched in or beside each run like the other
evaluations (``evals/segmentation``, ``eval-segmentation``, ``segmentation``, or the folders passed
explicitly). A run's row gives its clean mIoU and pixel accuracy, the mean mIoU over the corrupted
cells, and the random-init floor of the same folder with the paired-bootstrap interval of
run minus floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.report_discovery import RunRecord, _candidates, read_csv
from fdbench.io import read_json

SEG_SUBDIRS = ("evals/segmentation", "eval-segmentation", "segmentation")
COLUMNS = [
    "run", "dataset", "clean_miou", "clean_pixel_acc", "corrupted_miou", "corrupted_cells",
    "floor_clean_miou", "minus_floor_miou", "minus_floor_ci", "verdict", "folder",
]  # fmt: skip


def _fmt(x: float) -> str:
    return f"{x:+.1f}"


def segmentation_table(records: list[RunRecord], explicit: Sequence[str | Path] = ()) -> pd.DataFrame:
    """One row per run that an eval-segmentation folder holds (the first folder found wins)."""
    rows = []
    for record in records:
        for folder in _candidates(record, explicit, SEG_SUBDIRS, "summary.json"):
            summary, table = read_json(folder / "summary.json") or {}, read_csv(folder / "summary.csv")
            if table is None or "clean_miou" not in table.columns:
                continue
            table["checkpoint"] = table["checkpoint"].astype(str)
            infos = summary.get("checkpoints", {})
            label = next(
                (lb for lb, info in infos.items() if info.get("kind") == "pretrained"
                 and record.owns(lb, info.get("path"), info.get("sha256"))),
                None,
            )  # fmt: skip
            if label is None or label not in set(table["checkpoint"]):
                continue
            row = table[table["checkpoint"] == label].iloc[0]
            floor = table[table["kind"] == "floor"]
            diffs = read_csv(folder / "differences.csv")
            diff = None
            if diffs is not None and not floor.empty and {"a", "b", "metric"} <= set(diffs.columns):
                hit = diffs[(diffs["a"] == floor["checkpoint"].iloc[0]) & (diffs["b"] == label)]
                hit = hit[hit["metric"] == "clean miou"]
                diff = hit.iloc[0] if len(hit) else None
            rows.append(
                {
                    "run": record.label,
                    "dataset": (summary.get("settings") or {}).get("dataset"),
                    "clean_miou": round(float(row["clean_miou"]), 2),
                    "clean_pixel_acc": round(float(row["clean_pixel_acc"]), 2),
                    "corrupted_miou": round(float(row["corrupted_miou"]), 2) if row["corrupted_cells"] else None,
                    "corrupted_cells": int(row["corrupted_cells"]),
                    "floor_clean_miou": round(float(floor["clean_miou"].iloc[0]), 2) if len(floor) else None,
                    "minus_floor_miou": _fmt(diff["difference"]) if diff is not None else None,
                    "minus_floor_ci": f"[{_fmt(diff['ci_low'])}, {_fmt(diff['ci_high'])}]"
                    if diff is not None
                    else None,
                    "verdict": diff["verdict"] if diff is not None else None,
                    "folder": str(folder),
                }
            )
            break
    return pd.DataFrame(rows, columns=COLUMNS)


def segmentation_missing(records: list[RunRecord], table: pd.DataFrame) -> pd.DataFrame:
    """The missing-pieces rows (same columns as compare's missing table) of runs without results."""
    have = set(table["run"]) if not table.empty else set()
    rows = []
    for r in records:
        if r.label in have or r.checkpoint is None:
            continue
        rows.append(
            {
                "run": r.label,
                "piece": "eval-segmentation",
                "status": "missing",
                "how_to_get_it": f"fdbench eval-segmentation {r.checkpoint} (then pass --segmentation DIR to compare)",
            }
        )
    return pd.DataFrame(rows, columns=["run", "piece", "status", "how_to_get_it"])


def add_segmentation_section(doc, table: pd.DataFrame, runs: list[str]) -> None:
    """The report's "Semantic segmentation" section (typed blocks of analysis.report_render)."""
    doc.heading("Semantic segmentation")
    absent = [r for r in runs if table.empty or r not in set(table["run"])]
    if absent:
        doc.items([f"{r}: never evaluated with eval-segmentation (missing)" for r in absent], "missing")
    if table.empty:
        return
    doc.text(
        "DINOv2's linear segmentation probe: BatchNorm + 1x1 convolution on the frozen patch tokens, logits "
        "upsampled bilinearly to the labels, trained with cross-entropy (void ignored). mIoU and pixel "
        "accuracy in % on val; `corrupted_miou`: mean over the corrupted cells evaluated (geometric "
        "corruptions left out unless asked for). Floor: the architecture at random initialisation, same "
        "head and images; interval: paired bootstrap over val images (95%)."
    )
    doc.table("segmentation", table, "mIoU and pixel accuracy per run, beside the random-init floor")
