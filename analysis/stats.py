"""Paired statistics between two checkpoints evaluated on the same images.

- ``mcnemar_exact``: McNemar's exact test on the discordant pairs (A right & B wrong: b; A wrong &
  B right: c): under H0 b ~ Binomial(b + c, 1/2); the two-sided p-value is
  min(1, 2 * P(X <= min(b, c))).
- ``paired_bootstrap``: resample the val images with replacement (the same resample for both
  checkpoints and for every corruption cell, since every cell holds the same images), recompute each
  metric for both checkpoints, and take the 2.5 / 97.5 percentiles of the difference B - A.
- ``differences``: the table of B - A for clean, each corruption, each group, the common-15 mean and
  mCE, with bootstrap 95% intervals, McNemar p-values (clean, groups) and a verdict worded by the
  interval: "better", "worse" or "not distinguishable at this sample size (95% CI covers 0)".

The McNemar test of a group pools the discordant pairs of all its (corruption, severity) cells; those
pairs share images, so it treats them as more independent than they are. The bootstrap interval
resamples whole images and is the primary statement; the group p-value is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.metrics import CLEAN, COMMON, GROUPS
from analysis.outcomes import Outcomes

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
INDISTINCT = "not distinguishable at this sample size (95% CI covers 0)"


def mcnemar_exact(a_correct, b_correct) -> tuple[int, int, float]:
    """(b, c, two-sided exact p) for paired correctness vectors of checkpoints A and B."""
    a, b_ = np.asarray(a_correct, bool).ravel(), np.asarray(b_correct, bool).ravel()
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return b, c, min(1.0, 2.0 * tail)


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n] counts: how often each image is drawn in each bootstrap resample of n images."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


@dataclass
class Metric:
    """A metric as a function of per-cell accuracies: ``cells`` (corruption, severity) it reads, and
    ``value(acc)`` where ``acc`` maps each cell to an accuracy array (one entry per resample)."""

    name: str
    cells: list[tuple[str, int]]
    kind: str  # "accuracy" (higher is better) or "error" (lower is better)
    mcnemar: bool = False
    denominators: dict | None = None  # corruption -> sum_s baseline error (mCE), None: mean error

    def value(self, acc: dict) -> np.ndarray:
        if self.kind == "accuracy":
            return np.mean([acc[c] for c in self.cells], axis=0)
        by_corruption: dict[str, list] = {}
        for corruption, severity in self.cells:
            by_corruption.setdefault(corruption, []).append(1.0 - acc[(corruption, severity)])
        if self.denominators is None:  # unnormalised: mean error over all cells
            return np.mean([e for errs in by_corruption.values() for e in errs], axis=0)
        return np.mean([np.sum(errs, axis=0) / self.denominators[c] for c, errs in by_corruption.items()], axis=0)


def standard_metrics(cells: list[tuple[str, int]], denominators: dict | None = None) -> list[Metric]:
    """clean, each corruption, each group, the common mean and mCE over the cells present."""
    corrupted = [c for c in cells if c[0] != CLEAN]
    names = list(dict.fromkeys(c for c, _ in corrupted))
    metrics = []
    if (CLEAN, 0) in cells:
        metrics.append(Metric("clean top-1", [(CLEAN, 0)], "accuracy", mcnemar=True))
    for name in names:
        metrics.append(Metric(f"{name} top-1", [c for c in corrupted if c[0] == name], "accuracy"))
    for group, members in GROUPS.items():
        own = [c for c in corrupted if c[0] in members]
        if own:
            metrics.append(Metric(f"{group} (mean) top-1", own, "accuracy", mcnemar=True))
    common = [c for c in corrupted if c[0] in COMMON]
    if common:
        metrics.append(Metric("common (mean) top-1", common, "accuracy"))
        usable = denominators if denominators and all(c in denominators for c, _ in common) else None
        metrics.append(
            Metric("mCE" if usable else "mCE (unnormalised mean error)", common, "error", denominators=usable)
        )
    return metrics


def verdict(lo: float, hi: float, kind: str) -> str:
    """B relative to A from the interval of B - A: only a CI that excludes 0 says better or worse."""
    if math.isnan(lo) or math.isnan(hi) or lo <= 0.0 <= hi:
        return INDISTINCT
    higher = lo > 0
    return "better" if higher == (kind == "accuracy") else "worse"


def differences(
    outcomes: Outcomes,
    a: str,
    b: str,
    protocol: str,
    *,
    denominators: dict | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> pd.DataFrame:
    """B - A per metric, with a paired bootstrap interval and (clean, groups) McNemar's exact p."""
    cells = [(c, s) for (ck, p, c, s) in outcomes.cells if ck == a and p == protocol and (b, p, c, s) in outcomes]
    columns = [
        "reference",
        "checkpoint",
        "protocol",
        "metric",
        "cells",
        "n",
        "reference_value",
        "value",
        "difference",
        "ci_lo",
        "ci_hi",
        "mcnemar_b",
        "mcnemar_c",
        "p_value",
        "verdict",
    ]
    if not cells:
        return pd.DataFrame(columns=columns)
    n = len(outcomes.get((a, protocol, *cells[0])))
    cells = [c for c in cells if len(outcomes.get((a, protocol, *c))) == n == len(outcomes.get((b, protocol, *c)))]
    weights = resample_weights(n, resamples, seed) / n
    rows = []
    alpha = (1.0 - level) / 2
    for metric in standard_metrics(cells, denominators):
        ca = {c: outcomes.get((a, protocol, *c)).astype(np.float64) for c in metric.cells}
        cb = {c: outcomes.get((b, protocol, *c)).astype(np.float64) for c in metric.cells}
        point_a = float(metric.value({c: v.mean() for c, v in ca.items()}))
        point_b = float(metric.value({c: v.mean() for c, v in cb.items()}))
        boot = metric.value({c: weights @ v for c, v in cb.items()}) - metric.value(
            {c: weights @ v for c, v in ca.items()}
        )
        lo, hi = (float(q) for q in np.quantile(boot, [alpha, 1.0 - alpha]))
        mb = mc = None
        p = math.nan
        if metric.mcnemar:
            mb, mc, p = mcnemar_exact(
                np.concatenate([outcomes.get((a, protocol, *c)) for c in metric.cells]),
                np.concatenate([outcomes.get((b, protocol, *c)) for c in metric.cells]),
            )
        rows.append(
            {
                "reference": a,
                "checkpoint": b,
                "protocol": protocol,
                "metric": metric.name,
                "cells": len(metric.cells),
                "n": n,
                "reference_value": point_a,
                "value": point_b,
                "difference": point_b - point_a,
                "ci_lo": lo,
                "ci_hi": hi,
                "mcnemar_b": mb,
                "mcnemar_c": mc,
                "p_value": p,
                "verdict": verdict(lo, hi, metric.kind),
            }
        )
    return pd.DataFrame(rows, columns=columns)
