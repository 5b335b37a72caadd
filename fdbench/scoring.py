"""Scores on features: the weighted kNN vote and top-k accuracy, shared by the online monitor of
pretraining (``pretrain.monitor``) and the probes of evaluation (``analysis.probes``).

kNN vote (DINO / DINOv2): for a query with cosine similarities ``s_j`` to its ``k`` nearest bank
rows of labels ``y_j``, class ``c`` scores ``sum_j [y_j = c] * exp(s_j / T)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["knn_votes", "topk_accuracy"]


@torch.no_grad()
def knn_votes(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class votes ``[len(queries), num_classes]`` on ``bank``'s device.

    ``bank``: ``[N, D]`` rows of unit norm (normalise once, query many times); ``queries`` are
    normalised here, in float32, ``chunk`` rows at a time (the ``[chunk, N]`` similarities bound memory).
    """
    device = bank.device
    k = min(k, len(bank))
    out = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk].to(device, torch.float32), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)  # [B, k]
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(q), num_classes, device=device, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.empty(0, num_classes, device=device)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest scores, for each k.

    k is capped at the number of classes (top-5 of a 4-class problem is the top-4, i.e. 1.0).
    """
    labels = labels.to(logits.device)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices == labels.view(-1, 1)  # [N, kmax]
    # integer counts / n: exact fractions, no float32 rounding in results.csv
    return {k: int(top[:, : min(k, kmax)].any(dim=1).sum()) / len(labels) if len(labels) else math.nan for k in ks}
