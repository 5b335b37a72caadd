"""eval-retrieval's outputs: the finished cells (resumable) and the files written from them.

- ``results.csv``: one row per (checkpoint, corruption, severity): mAP and mP@k of the Easy, Medium
  and Hard settings (fractions in [0, 1]);
- ``per_query.csv``: every query's AP per cell and setting (for paired statistics between models);
- ``summary.json``: settings, checkpoint fingerprints and the per-checkpoint aggregates;
- ``summary_table.csv``: the printed table (percentages): clean mAP E/M/H and, when corruptions
  were evaluated, their mean over the corrupted cells.

Every file is rewritten atomically after each cell; a cell counts as finished only when both its
results row and its per-query APs are stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.metrics import CLEAN
from analysis.resume_checks import refuse_other_summary
from analysis.retrieval_metrics import KS, SETTINGS
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json, json_safe

RESULT_COLUMNS = ["checkpoint", "kind", "corruption", "severity", "n_queries"] + [
    f"{metric}_{s}" for s in SETTINGS for metric in ["map"] + [f"mp{k}" for k in KS]
]
QUERY_COLUMNS = ["checkpoint", "corruption", "severity", "setting", "query", "ap"]
RESUME_KEYS = ("data", "ground_truth_sha256", "image_size", "multiscale", "seed")


class RetrievalStore:
    def __init__(self, rows: list[dict] = (), per_query: list[dict] = ()):
        self.rows = {_key(r): r for r in rows}
        self.per_query: dict[tuple, list[dict]] = {}
        for r in per_query:
            self.per_query.setdefault(_key(r), []).append(r)

    def has(self, label: str, corruption: str, severity: int) -> bool:
        key = (label, corruption, severity)
        return key in self.rows and key in self.per_query

    def add(self, label: str, kind: str, corruption: str, severity: int, scores: dict) -> dict:
        row = {"checkpoint": label, "kind": kind, "corruption": corruption, "severity": severity}
        row["n_queries"] = len(scores["medium"]["aps"])
        for s, block in scores.items():
            row[f"map_{s}"] = block["map"]
            for k, p in block["mp"].items():
                row[f"mp{k}_{s}"] = p
        key = (label, corruption, severity)
        self.rows[key] = row
        self.per_query[key] = [
            {"checkpoint": label, "corruption": corruption, "severity": severity, "setting": s, "query": q, "ap": ap}
            for s, block in scores.items()
            for q, ap in enumerate(block["aps"])
        ]
        return row

    def frames(self):
        results = pd.DataFrame(list(self.rows.values()), columns=RESULT_COLUMNS)
        per_query = pd.DataFrame([r for rows in self.per_query.values() for r in rows], columns=QUERY_COLUMNS)
        return results, per_query


def _key(row: dict) -> tuple:
    return (str(row["checkpoint"]), str(row["corruption"]), int(row["severity"]))


def read_previous(out: Path, settings: dict, fingerprints: dict[str, str]) -> RetrievalStore:
    """The cells of an earlier run in ``out`` that may be reused; a one-line error if they cannot be."""
    results, per_query, summary = out / "results.csv", out / "per_query.csv", out / "summary.json"
    if not results.exists():
        return RetrievalStore()
    try:
        frame = pd.read_csv(results)
        queries = pd.read_csv(per_query) if per_query.exists() else pd.DataFrame(columns=QUERY_COLUMNS)
        previous = json.loads(summary.read_text()) if summary.exists() else {}
    except (ValueError, OSError) as err:
        raise FdbenchError(
            f"cannot resume from {out}: {str(err).splitlines()[0]}; use another --out or --overwrite"
        ) from None
    if list(frame.columns) != RESULT_COLUMNS or list(queries.columns) != QUERY_COLUMNS:
        raise FdbenchError(f"{results} is not an eval-retrieval results.csv; use another --out or --overwrite")
    refuse_other_summary(out, previous, settings, RESUME_KEYS, fingerprints)
    for f in (frame, queries):
        f["checkpoint"] = f["checkpoint"].astype(str)
    return RetrievalStore(frame.to_dict("records"), queries.to_dict("records"))


def aggregates(results: pd.DataFrame) -> dict:
    """Per checkpoint: clean mAP per setting and the mean over the corrupted cells present."""
    out = {}
    for label, rows in results.groupby("checkpoint", sort=False):
        clean = rows[rows["corruption"] == CLEAN]
        corrupted = rows[rows["corruption"] != CLEAN]
        entry = {"kind": rows["kind"].iloc[0]}
        if len(clean):
            entry["clean"] = {s: float(clean[f"map_{s}"].iloc[0]) for s in SETTINGS}
        if len(corrupted):
            entry["corrupted_mean"] = {s: float(corrupted[f"map_{s}"].mean()) for s in SETTINGS}
            entry["corrupted_cells"] = int(len(corrupted))
        out[str(label)] = entry
    return out


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for label, agg in aggregates(results).items():
        row = {"checkpoint": label, "kind": agg["kind"]}
        for part, name in (("clean", "clean"), ("corrupted_mean", "corrupted")):
            for s in SETTINGS:
                value = agg.get(part, {}).get(s)
                row[f"{name} mAP {s[0].upper()} %"] = None if value is None else round(100 * value, 2)
        row["corrupted cells"] = agg.get("corrupted_cells", 0)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all") if len(table) else table


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, na_rep="-") if len(table) else "(no results)"


def write_outputs(out: Path, store: RetrievalStore, settings: dict, checkpoints: dict) -> dict:
    results, per_query = store.frames()
    table = summary_table(results)
    files = {
        "results": out / "results.csv",
        "per_query": out / "per_query.csv",
        "summary_json": out / "summary.json",
        "table": out / "summary_table.csv",
    }
    atomic_write_csv(files["results"], results)
    atomic_write_csv(files["per_query"], per_query)
    atomic_write_csv(files["table"], table)
    payload = {"command": "eval-retrieval", "settings": settings, "checkpoints": checkpoints}
    payload["results"] = aggregates(results)
    atomic_write_json(files["summary_json"], json_safe(payload))
    return {**files, "frames": (results, per_query, table)}
