"""Seeds in ``compare``: runs that share a recipe except for the seed form one arm.

Two runs belong to one arm when their ``config.yaml`` is equal once the seed and the options that do
not change what is trained (output folder, device, threads, workers, logging, checkpoint cadence,
TensorBoard) are removed. For each arm with two or more seeds the table gives, per headline
quantity, the number of seeds, mean, sample standard deviation and a 95% t-interval of the mean
over seeds (``mean +- t(0.975, n - 1) * sd / sqrt(n)``). This is the seed-to-seed spread; the
per-image intervals of one pair of runs are in ``differences.csv``.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.report_discovery import RunRecord

# options that change where and how fast a run goes, not what it learns (and the seed itself)
NOT_THE_RECIPE = {
    "run": {
        "seed",
        "out",
        "device",
        "threads",
        "compile",
        "log_every",
        "eval_every",
        "save_every_minutes",
        "save_every_steps",
        "keep_every_epochs",
        "stop_after_steps",
        "tensorboard",
    },
    "data": {"workers"},
}
QUANTITIES = (
    ("linear_clean_top1_pct", "clean top-1, linear (%)"),
    ("knn_clean_top1_pct", "clean top-1, kNN (%)"),
    ("linear_mean_corruption_error_pct", "mean corruption error, linear (%)"),
    ("linear_noise_top1_pct", "noise-group top-1, linear (%)"),
    ("linear_blur_top1_pct", "blur-group top-1, linear (%)"),
    ("final_knn_top1_pct", "final online kNN top-1 (%)"),
    ("wall_clock_s", "training wall-clock (s)"),
)


def recipe_key(config: dict | None) -> str | None:
    """The run's recipe without its seed and run-only options, as canonical JSON (None: no config)."""
    if not isinstance(config, dict):
        return None
    kept = {}
    for section, values in config.items():
        if isinstance(values, dict):
            drop = NOT_THE_RECIPE.get(section, set())
            kept[section] = {k: v for k, v in values.items() if k not in drop}
        else:
            kept[section] = values
    return json.dumps(kept, sort_keys=True, default=str)


def _arm_name(labels: list[str]) -> str:
    stems = {re.sub(r"-s\d+$", "", label) for label in labels}
    return stems.pop() if len(stems) == 1 else labels[0]


def seed_groups(records: list[RunRecord]) -> dict[str, list[str]]:
    """Arm name -> labels of its runs, for arms with at least two runs (in the records' order)."""
    by_key: dict[str, list[str]] = {}
    for r in records:
        key = recipe_key(r.config) if r.is_run else None
        if key is not None:
            by_key.setdefault(key, []).append(r.label)
    return {_arm_name(labels): labels for labels in by_key.values() if len(labels) >= 2}


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample sd, lo, hi) of the mean with a t-interval; NaNs dropped."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return mean, sd, mean - half, mean + half


def seeds_table(groups: dict[str, list[str]], headline: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for arm, labels in groups.items():
        for key, title in QUANTITIES:
            values = [headline.get(label, {}).get(key) for label in labels]
            values = [float(v) for v in values if v is not None]
            if not values or all(math.isnan(v) for v in values):
                continue
            mean, sd, lo, hi = mean_interval(values)
            rows.append(
                {
                    "arm": arm,
                    "quantity": title,
                    "seeds": len([v for v in values if not math.isnan(v)]),
                    "runs": " ".join(labels),
                    "mean": mean,
                    "sd": sd,
                    "ci_lo": lo,
                    "ci_hi": hi,
                    "values": " ".join(f"{v:.2f}" for v in values),
                }
            )
    columns = ["arm", "quantity", "seeds", "runs", "mean", "sd", "ci_lo", "ci_hi", "values"]
    return pd.DataFrame(rows, columns=columns)
