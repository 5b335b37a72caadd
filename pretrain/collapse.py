"""Is the teacher learning anything? Two collapse signals, read on logging steps.

- ``teacher_entropy``: the mean entropy of the teacher's output distributions over the ``K``
  prototypes (the targets the student is trained on, centred and sharpened), as a fraction of
  ``ln K``. Near 1 the teacher says "uniform" for every image: the DINO term then sits at ``ln K``
  and teaches nothing.
- ``teacher_rank``: RankMe (Garrido et al., 2023), the effective rank of the teacher's class-token
  embeddings of the batch: ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps`` over the
  singular values ``s``. Near 1 every image maps to the same direction.
- ``teacher_prototypes``: how many distinct prototypes are the teacher's top choice across the batch,
  and ``teacher_batch_entropy``, the entropy of the batch's mean target as a fraction of ``ln K``.
  Sharp per-image targets (low ``teacher_entropy``) are healthy only if the batch spreads over many
  prototypes; sharp targets that all pick one prototype are the other collapse, which per-image
  entropy alone cannot tell apart from a confident teacher.

:class:`CollapseWatch` turns them into warnings when a signal stays past its limit for
``patience`` logging steps in a row; the engine logs each warning once and lists them in the run's
``summary.json`` (``warnings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def entropy_fraction(probs: torch.Tensor) -> float:
    """Mean over rows of ``H(p) / ln K`` for probability rows ``probs`` [N, K] (0 log 0 = 0)."""
    p = probs.detach().float()
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return float(entropy.mean() / math.log(p.shape[-1]))


def prototypes_used(probs: torch.Tensor) -> int:
    """How many distinct prototypes are some row's most probable one, for ``probs`` [N, K]."""
    return int(torch.unique(probs.detach().argmax(dim=-1)).numel())


def batch_entropy_fraction(probs: torch.Tensor) -> float:
    """``H(mean over rows of p) / ln K``: near 0 when the whole batch targets one prototype."""
    mean = probs.detach().float().mean(dim=0, keepdim=True)
    return entropy_fraction(mean)


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank of ``embeddings`` [N, D] (between 1 and min(N, D))."""
    s = torch.linalg.svdvals(embeddings.detach().float())
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class CollapseWatch:
    entropy_limit: float = 0.95  # warn above this fraction of ln K
    rank_fraction: float = 0.05  # warn below this fraction of min(batch, embedding width)
    patience: int = 3  # logging steps in a row
    streaks: dict[str, int] = field(default_factory=lambda: {"entropy": 0, "rank": 0})
    warnings: list[str] = field(default_factory=list)
    _warned: set[str] = field(default_factory=set)

    def observe(self, step: int, entropy: float, rank: float, n_rows: int, width: int) -> list[str]:
        """Record one logging step's signals; returns the warnings raised by it (each kind once)."""
        rank_limit = self.rank_fraction * min(n_rows, width)
        bad = {"entropy": entropy > self.entropy_limit, "rank": rank < rank_limit}
        new = []
        for kind, is_bad in bad.items():
            self.streaks[kind] = self.streaks[kind] + 1 if is_bad else 0
            if self.streaks[kind] >= self.patience and kind not in self._warned:
                self._warned.add(kind)
                if kind == "entropy":
                    message = (
                        f"teacher collapse at step {step}: its output entropy is {entropy:.3f} ln K "
                        f"(> {self.entropy_limit} ln K) for {self.patience} logging steps: the teacher "
                        f"is near uniform and the DINO loss teaches nothing"
                    )
                else:
                    message = (
                        f"teacher collapse at step {step}: the effective rank (RankMe) of its class "
                        f"embeddings is {rank:.2f} (< {rank_limit:.1f}, {self.rank_fraction:.0%} of "
                        f"min(batch {n_rows}, width {width})) for {self.patience} logging steps"
                    )
                self.warnings.append(message)
                new.append(message)
        return new

    def state_dict(self) -> dict:
        return {"streaks": dict(self.streaks), "warnings": list(self.warnings), "warned": sorted(self._warned)}

    def load_state_dict(self, state: dict) -> None:
        self.streaks = dict(state["streaks"])
        self.warnings = list(state["warnings"])
        self._warned = set(state["warned"])
