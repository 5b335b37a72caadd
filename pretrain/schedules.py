"""Per-iteration schedules (lr, weight decay, teacher momentum and temperature) and optimiser groups.

Every schedule is a tensor with one value per training iteration, so the engine reads
``schedule[it]`` and a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

from pretrain.param_groups import wd_multiplier

__all__ = ["cosine_schedule", "linear_warmup_then_constant", "scaled_lr", "param_groups", "apply_schedules", "layer_id"]


def cosine_schedule(
    base: float, final: float, total_iters: int, warmup_iters: int = 0, warmup_start: float = 0.0, freeze_iters: int = 0
) -> torch.Tensor:
    """DINOv2's ``CosineScheduler`` as a float64 tensor of ``total_iters`` values.

    ``[0] * freeze_iters`` then ``linspace(warmup_start, base, warmup_iters)`` (the last warm-up
    value is ``base``), then over the ``n`` remaining iterations ``i = 0..n-1``:
    ``final + (base - final) * (1 + cos(pi * i / n)) / 2`` (starts at ``base``, approaches ``final``;
    the reference code returns ``final`` itself only past the end).

    A freeze or warm-up longer than the schedule is shortened to fit (freeze first, then warm-up:
    the ramp then spans what is left, still ending at ``base``), so a short run with the recipe's
    10 warm-up epochs gets a valid, warm-up-only schedule instead of an error.
    """
    total_iters = int(total_iters)
    if total_iters < 0:
        raise ValueError(f"total_iters must be >= 0, got {total_iters}")
    freeze_iters = min(max(int(freeze_iters), 0), total_iters)
    warmup_iters = min(max(int(warmup_iters), 0), total_iters - freeze_iters)
    n = total_iters - freeze_iters - warmup_iters
    steps = np.arange(n)
    cosine = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * steps / max(n, 1)))
    values = np.concatenate([np.zeros(freeze_iters), np.linspace(warmup_start, base, warmup_iters), cosine])
    return torch.from_numpy(values.astype(np.float64))


def linear_warmup_then_constant(start: float, end: float, warmup_iters: int, total_iters: int) -> torch.Tensor:
    """``linspace(start, end, warmup_iters)`` then ``end`` up to ``total_iters`` (teacher temperature).

    DINOv2: 0.04 -> 0.07 over the first 30 epochs. A warm-up longer than the run is shortened to the
    run's length (the ramp still ends at ``end``).
    """
    total_iters = int(total_iters)
    warmup_iters = min(max(int(warmup_iters), 0), total_iters)
    values = np.concatenate([np.linspace(start, end, warmup_iters), np.full(total_iters - warmup_iters, end)])
    return torch.from_numpy(values.astype(np.float64))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """DINOv2's square-root rule: ``base_lr * sqrt(batch_size / 1024)`` (``batch_size``: all processes)."""
    return base_lr * math.sqrt(batch_size / 1024)


# Parameters that are neither matrices of a layer nor decayed: biases, every norm's affine
# parameters, LayerScale (timm names it ``gamma``), learned tokens and the position table.
# Parameters that sit below the first block (layer 0): the embedding stage.
_EMBEDDING = re.compile(r"(^|\.)(pos_embed|patch_embed|cls_token|reg_token|register_tokens|mask_token)(\.|$)")
_BLOCK = re.compile(r"(^|\.)blocks\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a backbone parameter: 0 for the embeddings, ``i + 1`` for block ``i``, else
    ``num_layers + 1`` (the final norm and anything after the blocks)."""
    if _EMBEDDING.search(name):
        return 0
    match = _BLOCK.search(name)
    if match:
        return int(match.group(2)) + 1
    return num_layers + 1


def param_groups(
    named_modules: dict[str, nn.Module],
    lr_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    num_layers: int | None = None,
    wd_rule: str = "no-decay-tokens",
) -> list[dict]:
    """AdamW parameter groups with DINOv2's multipliers.

    For a backbone parameter at depth ``layer_id`` (see :func:`layer_id`) of a ViT with
    ``L = num_layers`` blocks: ``lr_multiplier = lr_decay ** (L + 1 - layer_id)``, times
    ``patch_embed_lr_mult`` for the patch embedding. So block ``i`` gets ``lr_decay ** (L - i)``
    (the last block ``lr_decay``, the first ``lr_decay ** L``), the final norm 1, the embeddings
    ``lr_decay ** (L + 1)``. Heads (modules without ``blocks``) get 1. ``wd_multiplier`` follows
    ``wd_rule`` (:mod:`pretrain.param_groups`): 0 for biases, norms and LayerScale under both rules,
    and also for the learned tokens and the position table under ``no-decay-tokens``; the engine
    passes ``OptimConfig.weight_decay_rule`` (``dinov2`` in every preset). ``is_last_layer``
    marks the heads' weight-normalised ``last_layer`` (frozen during the first epoch).

    A module counts as a backbone when it has ``blocks``; ``num_layers`` defaults to its block
    count. Parameters shared between modules (an iBOT head that is the DINO head) appear once;
    frozen parameters are skipped. Parameters with equal multipliers share one group (fewer groups,
    fewer optimiser kernel launches); ``names`` lists each group's parameter names.
    """
    seen: set[int] = set()
    merged: dict[tuple[float, float, bool], dict] = {}
    for prefix, module in named_modules.items():
        blocks = getattr(module, "blocks", None)
        depth = num_layers if num_layers is not None else (len(blocks) if blocks is not None else 0)
        for local_name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{prefix}.{local_name}" if prefix else local_name
            lr_mult = 1.0
            if blocks is not None:
                lr_mult = lr_decay ** (depth + 1 - layer_id(local_name, depth))
                if "patch_embed" in local_name:
                    lr_mult *= patch_embed_lr_mult
            wd_mult = wd_multiplier(local_name, wd_rule)
            last = "last_layer" in local_name
            group = merged.setdefault(
                (lr_mult, wd_mult, last),
                {"params": [], "names": [], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult, "is_last_layer": last},
            )
            group["params"].append(param)
            group["names"].append(name)
    return list(merged.values())


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, freeze_last_layer: bool) -> None:
    """Write this iteration's values: ``lr * lr_multiplier`` (0 for the heads' last layer while frozen)
    and ``wd * wd_multiplier`` into every parameter group."""
    for group in optimizer.param_groups:
        frozen = freeze_last_layer and group.get("is_last_layer", False)
        group["lr"] = 0.0 if frozen else float(lr) * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = float(wd) * group.get("wd_multiplier", 1.0)
