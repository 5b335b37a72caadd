"""``fdbench compare``'s statistics: floors beside each run, and paired differences with intervals.

Reads, from each run's eval-corruptions folder, ``outcomes.npz`` (per-image correctness) and the
floors evaluated with it (rows of kind ``floor`` / ``ceiling`` in its results.csv). Two runs are
compared image by image only when one eval-corruptions call evaluated both (same folder: the same
val images and the same corrupted pixels); otherwise the table says why there is no interval.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.outcomes import FILENAME, Outcomes
from analysis.stats import INDISTINCT, differences

PROTOCOLS = ("linear", "knn")


class _Folders:
    """results.csv and outcomes.npz of each eval folder, read once."""

    def __init__(self):
        self.results: dict[Path, pd.DataFrame | None] = {}
        self.outcomes: dict[Path, Outcomes] = {}

    def get(self, folder: str) -> tuple[pd.DataFrame | None, Outcomes]:
        key = Path(folder).resolve()
        if key not in self.results:
            try:
                frame = pd.read_csv(key / "results.csv")
                frame["checkpoint"] = frame["checkpoint"].astype(str)
            except (OSError, ValueError):
                frame = None
            self.results[key] = frame
            try:
                self.outcomes[key] = Outcomes.load(key / FILENAME)
            except Exception:  # an unreadable outcomes file means no intervals, not a failed report
                self.outcomes[key] = Outcomes()
        return self.results[key], self.outcomes[key]


def _floor_labels(results: pd.DataFrame | None) -> list[str]:
    if results is None or "kind" not in results.columns:
        return []
    return list(dict.fromkeys(results.loc[results["kind"] != "pretrained", "checkpoint"]))


def paired_tables(labels: list[str], reference: str | None, eval_sources: dict) -> dict[str, pd.DataFrame]:
    """``floors``: each run's clean top-1 beside each floor's, with the paired interval of run - floor;
    ``differences``: each run minus the reference, per metric, with interval, p and verdict."""
    folders = _Folders()
    floor_rows, diff_parts = [], []
    for run in labels:
        if run not in eval_sources:
            continue
        src = eval_sources[run][0]
        results, outcomes = folders.get(src["folder"])
        if results is None:
            continue
        for floor in _floor_labels(results):
            kind = results.loc[results["checkpoint"] == floor, "kind"].iloc[0]
            for protocol in PROTOCOLS:
                table = differences(outcomes, floor, src["label"], protocol)
                row = table[table["metric"] == "clean top-1"]
                if row.empty:
                    continue
                r = row.iloc[0]
                floor_rows.append(
                    {
                        "run": run,
                        "floor": floor,
                        "kind": kind,
                        "protocol": protocol,
                        "run_clean_top1_pct": 100 * r["value"],
                        "floor_clean_top1_pct": 100 * r["reference_value"],
                        "difference_pp": 100 * r["difference"],
                        "ci_lo_pp": 100 * r["ci_lo"],
                        "ci_hi_pp": 100 * r["ci_hi"],
                        "p_value": r["p_value"],
                        "verdict": r["verdict"],
                    }
                )
        if reference is None or run == reference or reference not in eval_sources:
            continue
        ref_src = eval_sources[reference][0]
        if Path(ref_src["folder"]).resolve() != Path(src["folder"]).resolve():
            continue
        table = differences(outcomes, ref_src["label"], src["label"], "linear")
        table = pd.concat([table, differences(outcomes, ref_src["label"], src["label"], "knn")], ignore_index=True)
        table["reference"], table["checkpoint"] = reference, run
        diff_parts.append(table.rename(columns={"checkpoint": "run"}))
    floor_cols = [
        "run",
        "floor",
        "kind",
        "protocol",
        "run_clean_top1_pct",
        "floor_clean_top1_pct",
        "difference_pp",
        "ci_lo_pp",
        "ci_hi_pp",
        "p_value",
        "verdict",
    ]
    diffs = pd.concat(diff_parts, ignore_index=True) if diff_parts else pd.DataFrame()
    return {"floors": pd.DataFrame(floor_rows, columns=floor_cols), "differences": diffs}


def floor_headline(headline: dict, floors: pd.DataFrame) -> None:
    """Add each floor's (and the ceiling's) clean top-1 to each run's headline numbers (in place)."""
    for row in floors.itertuples():
        name = "ceiling" if row.kind == "ceiling" else f"{row.floor.replace('-', '_')}_floor"
        key = f"{row.protocol}_{name}_clean_top1_pct"
        if row.run in headline:
            headline[row.run][key] = row.floor_clean_top1_pct


def paired_findings(labels: list[str], reference: str | None, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Sentences worded by the intervals: floors first, then differences to the reference."""
    out = []
    floors, diffs = tables["floors"], tables["differences"]
    weak = []
    for run in labels:
        for protocol in PROTOCOLS:
            rows = floors[(floors["run"] == run) & (floors["protocol"] == protocol) & (floors["kind"] == "floor")]
            if rows.empty:
                continue
            best = rows.loc[rows["floor_clean_top1_pct"].idxmax()]
            if best["verdict"] != "better":
                weak.append(run)
                out.append(
                    f"**{run}** ({protocol} probe) does not beat its best floor, **{best['floor']}**, on clean "
                    f"accuracy by a statistically supported margin: {best['run_clean_top1_pct']:.1f}% vs "
                    f"{best['floor_clean_top1_pct']:.1f}%, difference {best['difference_pp']:+.1f} pp "
                    f"(95% CI {best['ci_lo_pp']:+.1f} to {best['ci_hi_pp']:+.1f}; {best['verdict']})."
                )
            else:
                out.append(
                    f"**{run}** ({protocol} probe) beats its best floor, **{best['floor']}**: "
                    f"{best['difference_pp']:+.1f} pp (95% CI {best['ci_lo_pp']:+.1f} to "
                    f"{best['ci_hi_pp']:+.1f})."
                )
    weak = list(dict.fromkeys(weak))
    if weak:
        out.append(
            f"**Caution**: {', '.join(weak)} do(es) not beat the best floor; robustness comparisons between "
            "such encoders are not meaningful (they compare encoders worse than, or no better than, their "
            "own input or an untrained network)."
        )
    if not diffs.empty:
        for (run, protocol), rows in diffs.groupby(["run", "protocol"], sort=False):
            parts = []
            for metric in ("clean top-1", "noise (mean) top-1", "blur (mean) top-1", "common (mean) top-1"):
                r = rows[rows["metric"] == metric]
                if r.empty:
                    continue
                r = r.iloc[0]
                p = "" if pd.isna(r["p_value"]) else f", McNemar p = {r['p_value']:.3g}"
                parts.append(
                    f"{metric} {100 * r['difference']:+.1f} pp (95% CI {100 * r['ci_lo']:+.1f} to "
                    f"{100 * r['ci_hi']:+.1f}{p}): {r['verdict']}"
                )
            if parts:
                out.append(
                    f"**{run}** vs **{reference}** ({protocol} probe, paired over {int(rows['n'].iloc[0])} "
                    f"images): " + "; ".join(parts) + "."
                )
    elif reference is not None and len(labels) > 1:
        out.append(
            "No paired intervals between runs: their per-image outcomes were not evaluated in one "
            f"eval-corruptions call (run `fdbench eval-corruptions` on all checkpoints together); "
            f"differences from point estimates are not evidence. '{INDISTINCT}' is the default."
        )
    return out
