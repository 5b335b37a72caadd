"""The revisited Oxford/Paris evaluation (Radenovic et al., CVPR 2018): mAP and mP@k for the Easy,
Medium and Hard settings.

Each query's ground truth splits the database into ``easy``, ``hard`` and ``junk`` images (the rest
are negatives). A setting says which of them count as positives and which are *junk*, i.e. removed
from the ranking before precision is computed (neither rewarded nor penalised), as in the public
``revisitop`` evaluation (``example_evaluate.py``):

==========  ====================  ====================
setting     positives             junk
==========  ====================  ====================
easy        easy                  junk + hard
medium      easy + hard           junk
hard        hard                  junk + easy
==========  ====================  ====================

Average precision is the trapezoidal area under the precision-recall curve as ``compute_ap`` there
defines it: for the j-th positive (0-based) at 0-based rank r of the junk-free ranking, the step
adds ``(j / r + (j + 1) / (r + 1)) / 2 / n_positives`` (with ``j / r`` taken as 1 at r = 0).
mP@k follows ``compute_map``: with the positives' 1-based junk-free ranks ``pos``, the query's
P@k is ``#(pos <= k') / k'`` where ``k' = min(max(pos), k)``. A query without positives in a
setting is left out of that setting's mean (and its AP is NaN), as there.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SETTINGS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
KS = (1, 5, 10)


def _ids(gnd: dict, keys: Sequence[str]) -> np.ndarray:
    parts = [np.asarray(gnd.get(k, []), dtype=np.int64).ravel() for k in keys]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def positive_ranks(ranking: np.ndarray, positives: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based ranks of the positives in ``ranking`` (database indices, best first) once junk is removed."""
    kept = ranking[~np.isin(ranking, junk)]
    return np.flatnonzero(np.isin(kept, positives))


def average_precision(ranks: np.ndarray, n_positives: int) -> float:
    """Trapezoidal AP of positives at 0-based ``ranks`` (sorted), out of ``n_positives``."""
    if n_positives == 0:
        return math.nan
    ranks = np.asarray(ranks, dtype=np.float64)
    j = np.arange(len(ranks), dtype=np.float64)
    before = np.divide(j, ranks, out=np.ones_like(ranks), where=ranks > 0)
    after = (j + 1) / (ranks + 1)
    return float(((before + after) / 2).sum() / n_positives)


def precision_at(ranks: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """revisitop's P@k of one query from its positives' 0-based junk-free ranks."""
    pos = np.asarray(ranks) + 1
    if len(pos) == 0:
        return np.zeros(len(ks))
    return np.array([(pos <= min(pos.max(), k)).sum() / min(pos.max(), k) for k in ks], dtype=np.float64)


def evaluate_rankings(rankings: np.ndarray, gnd: Sequence[dict], ks: Sequence[int] = KS) -> dict:
    """mAP, mP@k and the per-query APs of each setting.

    ``rankings``: int [n_queries, n_database], each row the database indices best first (all of
    them). Returns ``{setting: {"map": float, "mp": {k: float}, "aps": [n_queries floats]}}``.
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or rankings.shape[0] != len(gnd):
        raise ValueError(f"rankings must be [n_queries={len(gnd)}, n_database], got {rankings.shape}")
    out = {}
    for setting, (ok_keys, junk_keys) in SETTINGS.items():
        aps, prs = [], []
        for ranking, qgnd in zip(rankings, gnd):
            positives = np.unique(_ids(qgnd, ok_keys))
            if len(positives) == 0:
                aps.append(math.nan)
                continue
            ranks = positive_ranks(ranking, positives, _ids(qgnd, junk_keys))
            aps.append(average_precision(ranks, len(positives)))
            prs.append(precision_at(ranks, ks))
        valid = [a for a in aps if not math.isnan(a)]
        mean_p = np.mean(prs, axis=0) if prs else np.full(len(ks), math.nan)
        out[setting] = {
            "map": float(np.mean(valid)) if valid else math.nan,
            "mp": {int(k): float(p) for k, p in zip(ks, mean_p)},
            "aps": aps,
        }
    return out


def rank_database(query_feats, db_feats) -> np.ndarray:
    """Database indices by decreasing cosine similarity (features already L2-normalised), per query;
    ties broken by database index (a stable sort), so the ranking is reproducible."""
    import torch

    sim = query_feats.float() @ db_feats.float().T
    return torch.sort(-sim, dim=1, stable=True).indices.numpy()
