"""One DINOv2 iteration (:func:`train_step`) and what it needs: the optimiser (:func:`build_optimizer`)
and the on-device watch for non-finite losses (:class:`NonFiniteWatch`). ``fdbench bench-train``
times this same step; the loop in :mod:`pretrain.engine` calls it once per batch.

Speed: the crops come from ``--data-pipeline`` (``pretrain.pipeline``: ``gpu`` = workers only decode
and the device augments the batch, the default on CUDA; ``cpu`` = workers augment), the DINO/iBOT
cross-entropies are the memory-light chunked ones and, with ``--compile`` (default on CUDA), the
backbones are compiled in place (``pretrain.fast_step``). The step reads nothing back to the host:
losses stay on the device and are read on logging steps only (``train_step``, ``NonFiniteWatch``),
and the iBOT masked tokens are gathered at indices the collate computed on the CPU (``pretrain.meta_arch``),
so on CUDA the host queues step after step without waiting for the device.
"""

from __future__ import annotations

import torch

from pretrain.batch import CropBatch
from pretrain.config import PretrainConfig
from pretrain.meta_arch import MetaArch
from pretrain.schedules import apply_schedules, param_groups

LOSS_TERMS = ("loss", "dino", "koleo", "ibot")  # MetaArch.forward_backward's keys, in this order


def build_optimizer(meta: MetaArch, cfg: PretrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(
        meta.named_student_modules(),
        lr_decay=cfg.optim.layerwise_decay,
        patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult,
        wd_rule=cfg.optim.weight_decay_rule,
    )
    fused = meta.device.type == "cuda" and not meta.sharded  # fused AdamW takes no DTensors
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=fused)


def train_step(
    meta: MetaArch,
    optimizer: torch.optim.Optimizer,
    batch: CropBatch,
    *,
    lr: float,
    wd: float,
    freeze_last_layer: bool,
    teacher_temp: float,
    momentum: float,
    clip_grad: float,
) -> dict[str, torch.Tensor]:
    """One DINOv2 iteration at the given schedule values: forward/backward, per-part gradient
    clipping, AdamW (lr 0 for the heads' last layer while frozen), EMA of the teacher. ``fdbench bench-train`` times this too.

    Returns the loss terms (:data:`LOSS_TERMS`) and the backbone's gradient norm as device tensors:
    nothing is read back to the host, so on a GPU the host queues the next step while this one runs.
    """
    apply_schedules(optimizer, lr, wd, freeze_last_layer)
    optimizer.zero_grad(set_to_none=True)
    losses = meta.forward_backward(batch, teacher_temp)
    # the frozen last layer keeps its gradients, as in DINOv2: they count in its head's clip norm and
    # in AdamW's moments, and apply_schedules' lr 0 (applied after clipping) keeps the weights fixed
    grad_norm = meta.clip_gradients(clip_grad)
    optimizer.step()
    meta.update_teacher(momentum)
    return {**losses, "grad_norm": grad_norm}


class NonFiniteWatch:
    """The first step whose loss terms were not all finite, and those terms, kept on the device.

    Testing every loss on the host would make the host wait for the device at every step; a flag
    updated on the device costs two tiny kernels and is read where it matters (logging steps, before
    any checkpoint, when stopping), yet still names the exact step. Steps count from 1; 0 = none.
    """

    def __init__(self, device: torch.device):
        self.first = torch.zeros((), dtype=torch.long, device=device)
        self.values: torch.Tensor | None = None

    def add(self, step: int, values: torch.Tensor) -> None:
        bad = (~torch.isfinite(values)).any() & (self.first == 0)
        self.first = torch.where(bad, step, self.first)
        self.values = values if self.values is None else torch.where(bad, values, self.values)

    def first_bad(self) -> tuple[int, list[float]] | None:
        """``(step, values)`` of the first non-finite step, or None (reads back from the device)."""
        step = int(self.first)
        return None if step == 0 else (step, self.values.tolist())
