"""The comparison's instance-retrieval section: ``eval-retrieval`` outputs found beside the runs.

A folder counts when its ``results.csv`` has eval-retrieval's columns; it is searched like the
eval-corruptions folders (``--evals`` folders first, then ``evals/retrieval``, ``eval-retrieval`` or
``retrieval`` in, beside and above the run folder, and in the working directory). A row belongs to a
run by the checkpoint path or SHA-256 recorded in the folder's ``summary.json`` (as for
eval-corruptions); the floors (``pixels``, ``random-init``) of every folder used are shown beside.

Differences (``retrieval_differences.csv``): clean mAP of each run minus each floor of its folder,
and minus the reference run's (when both were evaluated on the same set), per setting, with a paired
bootstrap 95% interval over the queries (the same resample of queries for both; the stored
per-query APs of ``per_query.csv``) and the verdict of :func:`analysis.stats.verdict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

import numpy as np

from analysis.metrics import CLEAN
from analysis.report_discovery import RunRecord, _candidates, read_csv
from analysis.retrieval_metrics import SETTINGS
from analysis.retrieval_outputs import aggregates
from analysis.stats import LEVEL, resample_weights, verdict
from fdbench.io import read_json

RETRIEVAL_SUBDIRS = ("evals/retrieval", "eval-retrieval", "retrieval")
NEEDED = {"checkpoint", "kind", "corruption", "severity", "map_easy", "map_medium", "map_hard"}


def _source(folder: Path, cache: dict):
    key = folder.resolve()
    if key not in cache:
        results = read_csv(folder / "results.csv")
        ok = results is not None and NEEDED <= set(results.columns)
        if ok:
            results["checkpoint"] = results["checkpoint"].astype(str)
        per_query = read_csv(folder / "per_query.csv") if ok else None
        if per_query is not None:
            per_query["checkpoint"] = per_query["checkpoint"].astype(str)
        cache[key] = (results, read_json(folder / "summary.json") or {}, per_query) if ok else None
    return cache[key]


def retrieval_tables(
    records: Sequence[RunRecord], explicit: Sequence[str | Path], reference: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(the retrieval table, the paired differences, the missing-piece rows of runs without results)."""
    cache: dict = {}
    rows, floors, missing, clean_aps = [], {}, [], {}
    for r in records:
        found = None
        for folder in _candidates(r, explicit, RETRIEVAL_SUBDIRS, "results.csv"):
            src = _source(folder, cache)
            if src is None:
                continue
            results, summary, _ = src
            infos = summary.get("checkpoints", {})
            for label in dict.fromkeys(results["checkpoint"]):
                info = infos.get(label, {})
                if info.get("kind", "pretrained") != "floor" and r.owns(label, info.get("path"), info.get("sha256")):
                    found = (folder, results, summary, label)
                    break
            if found:
                break
        if found is None:
            ckpt = str(r.checkpoint) if r.checkpoint else f"{r.path}/final.pt"
            missing.append(
                {
                    "run": r.label,
                    "piece": "eval-retrieval",
                    "status": "missing",
                    "how_to_get_it": f"fdbench eval-retrieval {ckpt} --out {r.path if r.path.is_dir() else r.path.parent}"
                    "/evals/retrieval (embedded set; --data DIR for roxford5k / rparis6k)",
                }
            )
            continue
        folder, results, summary, label = found
        dataset = summary.get("settings", {}).get("dataset")
        per_query = cache[folder.resolve()][2]
        if per_query is not None:
            clean_aps[r.label] = (dataset, _clean_aps(per_query, label), _floor_aps(per_query, results))
        rows.append(
            _row(r.label, "pretrained", aggregates(results[results["checkpoint"] == label]).get(label), dataset, folder)
        )
        for floor, agg in aggregates(results[results["kind"] == "floor"]).items():
            floors.setdefault((floor, dataset), _row(floor, "floor", agg, dataset, folder))
    table = pd.DataFrame(rows + list(floors.values()))
    return table, _differences(clean_aps, reference), missing


def _clean_aps(per_query: pd.DataFrame, label: str) -> dict:
    part = per_query[(per_query["checkpoint"] == label) & (per_query["corruption"] == CLEAN)]
    return {s: part[part["setting"] == s].sort_values("query")["ap"].to_numpy(float) for s in SETTINGS}


def _floor_aps(per_query: pd.DataFrame, results: pd.DataFrame) -> dict:
    names = dict.fromkeys(results[results["kind"] == "floor"]["checkpoint"])
    return {name: _clean_aps(per_query, name) for name in names}


def map_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mAP of b - mAP of a, CI low, CI high): paired bootstrap over the queries both have an AP for."""
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return (np.nan, np.nan, np.nan)
    w = resample_weights(len(a), seed=seed)
    diffs = (w @ (b - a)) / w.sum(axis=1)
    lo, hi = np.percentile(diffs, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(b.mean() - a.mean()), float(lo), float(hi)


def _differences(clean_aps: dict, reference: str | None) -> pd.DataFrame:
    rows = []

    def add(run, against, dataset, aps_run, aps_other):
        for s in SETTINGS:
            a, b = aps_other.get(s), aps_run.get(s)
            if a is None or b is None or len(a) != len(b) or len(a) == 0:
                continue
            d, lo, hi = map_difference(a, b)
            rows.append(
                {
                    "run": run,
                    "minus": against,
                    "dataset": dataset,
                    "setting": s,
                    "clean mAP difference (pts)": round(100 * d, 2),
                    "CI low": round(100 * lo, 2),
                    "CI high": round(100 * hi, 2),
                    "verdict": verdict(lo, hi, "accuracy"),
                }
            )

    for run, (dataset, aps, floor_aps) in clean_aps.items():
        for floor, f_aps in floor_aps.items():
            add(run, floor, dataset, aps, f_aps)
        if reference in clean_aps and run != reference and clean_aps[reference][0] == dataset:
            add(run, reference, dataset, aps, clean_aps[reference][1])
    return pd.DataFrame(rows)


def _row(name: str, kind: str, agg: dict | None, dataset, folder: Path) -> dict:
    agg = agg or {}
    row = {"run": name, "kind": kind, "dataset": dataset}
    for part, title in (("clean", "clean"), ("corrupted_mean", "corrupted")):
        for s in SETTINGS:
            value = agg.get(part, {}).get(s)
            row[f"{title} mAP {s[0].upper()} %"] = None if value is None else round(100 * value, 2)
    row["corrupted cells"] = agg.get("corrupted_cells", 0)
    row["folder"] = str(folder)
    return row
