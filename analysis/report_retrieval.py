"""The comparison's instance-retrieval section: ``eval-retrieval`` outputs found beside the runs.

A folder counts when its ``results.csv`` has eval-retrieval's columns; it is searched like the
eval-corruptions folders (``--evals`` folders first, then ``evals/retrieval``, ``eval-retrieval`` or
``retrieval`` in, beside and above the run folder, and in the working directory). A row belongs to a
run by the checkpoint path or SHA-256 recorded in the folder's ``summary.json`` (as for
eval-corruptions); the floors (``pixels``, ``random-init``) of every folder used are shown beside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.report_discovery import RunRecord, _candidates, read_csv
from analysis.retrieval_outputs import aggregates
from analysis.retrieval_metrics import SETTINGS
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
        cache[key] = (results, read_json(folder / "summary.json") or {}) if ok else None
    return cache[key]


def retrieval_tables(records: Sequence[RunRecord], explicit: Sequence[str | Path]) -> tuple[pd.DataFrame, list[dict]]:
    """(the retrieval table, the missing-piece rows of runs without retrieval results)."""
    cache: dict = {}
    rows, floors, missing = [], {}, []
    for r in records:
        found = None
        for folder in _candidates(r, explicit, RETRIEVAL_SUBDIRS, "results.csv"):
            src = _source(folder, cache)
            if src is None:
                continue
            results, summary = src
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
        rows.append(
            _row(r.label, "pretrained", aggregates(results[results["checkpoint"] == label]).get(label), dataset, folder)
        )
        for floor, agg in aggregates(results[results["kind"] == "floor"]).items():
            floors.setdefault((floor, dataset), _row(floor, "floor", agg, dataset, folder))
    table = pd.DataFrame(rows + list(floors.values()))
    return table, missing


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
