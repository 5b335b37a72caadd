"""eval-corruptions' outputs: the rows and per-image outcomes so far (resumable), the files written
from them (``results.csv``, ``summary.csv``, ``summary.json``, ``summary_table.csv``,
``outcomes.npz``, ``differences.csv``) and the printed table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.metrics import CLEAN, GROUPS, UNNORMALISED, check_results, normalisation_name, summarise
from analysis.outcomes import FILENAME as OUTCOMES_FILE
from analysis.outcomes import Outcomes
from analysis.resume_checks import refuse_other_summary
from analysis.stats import differences
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json, json_safe, read_json

RESULT_COLUMNS = ["checkpoint", "kind", "protocol", "corruption", "severity", "n", "top1", "top5"]
# settings that must match for stored results to be reused
RESUME_KEYS = ("data", "data_fingerprint", "corrupted_root", "seed", "n_last_blocks", "k", "temperature")
_CHANGED = {"data_fingerprint": "data_fingerprint: the dataset's files changed"}


class ResultStore:
    """results.csv rows and per-image outcomes in memory, keyed by (checkpoint, protocol, corruption,
    severity). A cell counts as finished only with both (older folders without outcomes.npz are
    recomputed cell by cell, so their paired statistics become available)."""

    def __init__(self, rows: list[dict], outcomes: Outcomes | None = None):
        self.rows = {(r["checkpoint"], r["protocol"], r["corruption"], int(r["severity"])): r for r in rows}
        self.outcomes = outcomes or Outcomes()

    def has(self, label, protocol, corruption, severity) -> bool:
        key = (label, protocol, corruption, severity)
        return key in self.rows and key in self.outcomes

    def add(self, row: dict, correct) -> None:
        key = (row["checkpoint"], row["protocol"], row["corruption"], row["severity"])
        self.rows[key] = row
        self.outcomes.add(key, correct)

    def frame(self):
        return pd.DataFrame(list(self.rows.values()), columns=RESULT_COLUMNS)


def read_previous(out: Path, settings: dict, fingerprints: dict[str, str]) -> list[dict]:
    """Rows of an earlier run in ``out`` that may be reused; a clear error if its settings differ."""
    results, summary = out / "results.csv", out / "summary.json"
    if not results.exists():
        return []
    try:
        frame = pd.read_csv(results)
        previous = json.loads(summary.read_text()) if summary.exists() else {}
    except (ValueError, OSError) as err:
        raise FdbenchError(f"cannot resume from {out}: {err}; use another --out or --overwrite") from None
    if "kind" not in frame.columns and list(frame.columns) == [c for c in RESULT_COLUMNS if c != "kind"]:
        frame.insert(1, "kind", "pretrained")  # written before floors existed
    if list(frame.columns) != RESULT_COLUMNS:
        raise FdbenchError(f"{results} is not an eval-corruptions results.csv; use another --out or --overwrite")
    try:
        check_results(frame, results)
    except FdbenchError as err:
        raise FdbenchError(f"{err}; use another --out or --overwrite") from None
    refuse_other_summary(out, previous, settings, RESUME_KEYS, fingerprints, reasons=_CHANGED)
    frame["checkpoint"] = frame["checkpoint"].astype(str)
    return frame.to_dict("records")


def summary_table(summary, aggregates: dict, normalised: bool):
    """The printed table: one row per corruption / aggregate, two columns per checkpoint x protocol
    (mean top-1 accuracy % and CE %, or mean error % when there is no normalisation)."""
    second = "CE %" if normalised else "mean err % (unnormalised)"
    columns, data = [], {}
    order = list(dict.fromkeys(summary["corruption"])) if len(summary) else []
    row_names = (
        ["clean"] + order + [f"{g} (mean)" for g in GROUPS] + ["common (mean)", "mCE", "relative mCE", "extra (mean)"]
    )
    for ckpt, per_protocol in aggregates.items():
        for protocol, agg in per_protocol.items():
            acc_col, err_col = f"{ckpt}:{protocol} top1 %", f"{ckpt}:{protocol} {second}"
            columns += [acc_col, err_col]
            rows = summary[(summary["checkpoint"] == ckpt) & (summary["protocol"] == protocol)].set_index("corruption")
            acc = {"clean": agg["clean_top1"]}
            err = {"clean": agg["clean_error"] if not normalised else math.nan}
            for c in rows.index:
                acc[c] = rows.loc[c, "top1"]
                err[c] = rows.loc[c, "ce"] if normalised else rows.loc[c, "error"]
            for g, block in agg["groups"].items():
                acc[f"{g} (mean)"] = block["top1"]
                err[f"{g} (mean)"] = block["ce"] if normalised else block["error"]
            acc["common (mean)"] = agg["mean_corrupted_top1"]
            err["common (mean)"] = agg["mCE"] if normalised else agg["mean_corrupted_error"]
            if normalised:
                err["mCE"], err["relative mCE"] = agg["mCE"], agg["relative_mCE"]
            if agg["extra"]:
                acc["extra (mean)"] = agg["extra"]["top1"]
                err["extra (mean)"] = agg["extra"]["ce"] if normalised else agg["extra"]["error"]
            # percentages to 3 decimals: the CSV reads like the printed table, without float noise
            data[acc_col] = [round(100 * acc.get(r, math.nan), 3) for r in row_names]
            data[err_col] = [round(100 * err.get(r, math.nan), 3) for r in row_names]
    table = pd.DataFrame({"row": row_names, **{c: data[c] for c in columns}})
    # drop rows with nothing in them (groups not evaluated, mCE rows without normalisation)
    return table[table[columns].notna().any(axis=1)].reset_index(drop=True) if columns else table


def format_table(table) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.1f}", na_rep="-")


def write_outputs(out: Path, store: ResultStore, baseline, settings: dict, ckpt_info: dict) -> dict:
    results = store.frame()
    summary, aggregates = summarise(results.drop(columns="kind"), baseline)
    kinds = dict(zip(results["checkpoint"], results["kind"]))
    summary.insert(1, "kind", summary["checkpoint"].map(kinds))
    normalisation = normalisation_name(baseline)
    table = summary_table(summary, aggregates, normalised=normalisation != UNNORMALISED)
    paths = {
        "results": out / "results.csv",
        "summary": out / "summary.csv",
        "summary_json": out / "summary.json",
        "table": out / "summary_table.csv",
        "outcomes": out / OUTCOMES_FILE,
    }
    # outcomes first: a row in results.csv without its outcomes is recomputed on resume, never the reverse
    store.outcomes.save(paths["outcomes"])
    atomic_write_csv(paths["results"], results)
    atomic_write_csv(paths["summary"], summary)
    atomic_write_csv(paths["table"], table)
    previous = (read_json(paths["summary_json"]) or {}).get("checkpoints", {})
    checkpoints = {}
    for label in aggregates:
        info = {**previous.get(label, {}), **ckpt_info.get(label, {})}
        info.pop("protocols", None)
        checkpoints[label] = {**info, "protocols": aggregates[label]}
    atomic_write_json(
        paths["summary_json"],
        json_safe(
            {
                "normalisation": normalisation,
                "settings": settings,
                "checkpoints": checkpoints,
                "notes": [
                    "accuracies and errors are fractions in [0, 1]; mCE and relative mCE average the common "
                    "corruptions evaluated (see common_corruptions); group means use the common corruptions only"
                ],
            }
        ),
    )
    return {**paths, "frames": (results, summary, aggregates, table), "normalisation": normalisation}


def _denominators(baseline, protocol: str, store: ResultStore, label: str) -> dict | None:
    """corruption -> sum_s B(s, c) over the evaluated severities (the mCE denominators), or None."""
    base = baseline.get(protocol) if isinstance(baseline, dict) else baseline
    if base is None:
        return None
    severities: dict[str, list[int]] = {}
    for ck, p, c, s in store.rows:
        if ck == label and p == protocol and c != CLEAN:
            severities.setdefault(c, []).append(s)
    out = {}
    for corruption, sev in severities.items():
        errors = base.severity_errors(corruption, sorted(sev))
        if errors is not None:
            out[corruption] = float(sum(errors))
    return out


def difference_pairs(store: ResultStore) -> list[tuple[str, str]]:
    """(reference, other): every later pretrained checkpoint against the first, and every pretrained
    checkpoint against each floor and ceiling (the difference is pretrained minus floor)."""
    kinds = dict((r["checkpoint"], r["kind"]) for r in store.rows.values())
    pretrained = [k for k, v in kinds.items() if v == "pretrained"]
    others = [k for k, v in kinds.items() if v != "pretrained"]
    pairs = [(pretrained[0], b) for b in pretrained[1:]] if pretrained else []
    return pairs + [(floor, ckpt) for ckpt in pretrained for floor in others]


def write_differences(out: Path, store: ResultStore, baseline, protocols) -> Path:
    """differences.csv: paired bootstrap intervals and McNemar p-values for ``difference_pairs``."""
    frames = [
        differences(store.outcomes, a, b, protocol, denominators=_denominators(baseline, protocol, store, a))
        for a, b in difference_pairs(store)
        for protocol in protocols
    ]
    path = out / "differences.csv"
    frames = [f for f in frames if len(f)]
    atomic_write_csv(path, pd.concat(frames, ignore_index=True) if frames else differences(store.outcomes, "", "", ""))
    return path
