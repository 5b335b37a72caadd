"""The teacher's mean centring: an EMA of the mean teacher logit, subtracted before the softmax.

``p_t = softmax((z_t - c) / T_t)`` and ``c <- m c + (1 - m) mean_rows(z_t)`` (``m = 0.9``), the mean
taken over every row of every process. The centre is a buffer, so it travels with ``state_dict()``
(key ``center``) into checkpoints and resumes exactly. The DINO and iBOT losses are centres with a
loss attached (:mod:`pretrain.losses`), which keeps the checkpoint's ``losses`` entries as they were.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def all_reduce(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce (sum by default) when running under torch.distributed; no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=op if op is not None else dist.ReduceOp.SUM)
    return tensor


class Center(nn.Module):
    def __init__(self, out_dim: int, center_momentum: float = 0.9):
        super().__init__()
        self.out_dim = int(out_dim)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``softmax((z_t - c) / T_t)`` in float32, over the last dimension."""
        return F.softmax((teacher_logits.detach().float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean of all teacher rows`` (rows of every process; m = momentum).

        A batch without rows (e.g. no masked patch anywhere) leaves the centre unchanged.
        """
        z = teacher_logits.detach().float().reshape(-1, self.out_dim)
        # one all-reduce carries both the row sum and the row count (filled on the device: new_tensor
        # would copy a host number over, which waits for the device)
        stats = torch.cat([z.sum(dim=0), z.new_full((1,), float(z.shape[0]))])
        all_reduce(stats)
        count = stats[-1]
        batch_center = (stats[:-1] / count.clamp_min(1)).unsqueeze(0)
        updated = self.center * self.center_momentum + batch_center * (1.0 - self.center_momentum)
        # torch.where instead of `if count == 0`: no host-device sync in the training step
        self.center.copy_(torch.where(count > 0, updated, self.center))
