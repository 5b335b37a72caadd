"""Choices a run makes before its first step: CPU threads beside the DataLoader workers, whether to
compile, and what each stage costs in FLOPs per image (counted once per run on a scratch model)."""

from __future__ import annotations

import os

import torch

from fdbench.device import resolve_device
from pretrain import costs as costs_mod
from pretrain.config import PretrainConfig
from pretrain.data import AugmentedDataset, MultiCropCollate, default_workers
from pretrain.distributed import Dist
from pretrain.meta_arch import MetaArch
from pretrain.pipeline import make_augment
from pretrain.stages import StagePlan, none_stage


def cpu_threads_beside_workers(cfg: PretrainConfig) -> int | None:
    """On a CPU run without --threads: intra-op threads for the cores the DataLoader workers leave
    (at least 1, never more than torch's default). On 2 cores torch's default of 2 threads beside a
    worker process oversubscribed the CPU: a cpu-tiny step took about 3x longer than with 1 thread."""
    if resolve_device(cfg.run.device).type != "cpu":
        return None
    workers = cfg.data.workers if cfg.data.workers is not None else default_workers()
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - workers))


def resolve_compile(flag: bool | None, device: torch.device, strategy: str = "ddp") -> bool:
    """``--compile`` default: on CUDA only (on a CPU compiling costs more than the short runs gain),
    and not under ``--strategy fsdp`` (compiling through FSDP2's hooks is untested here)."""
    return device.type == "cuda" and strategy != "fsdp" if flag is None else bool(flag)


def measure_flops(
    cfg: PretrainConfig, stages: list[StagePlan], train_set, ddp: Dist, per_rank_batch: int, patch_size: int
) -> tuple[list[int], int]:
    """FLOPs per training image of each stage and of the ``none`` reference, counted on one step.

    The step is the real ``MetaArch.forward_backward`` (student forward + backward on every crop,
    teacher forward, heads, losses) of a scratch copy of the model, on a real batch made by the
    stage's augmentation and collate. The scratch copy keeps the run's weights, optimiser, centres
    and RNG untouched; FLOPs do not depend on the weights.
    """
    n = max(2, min(per_rank_batch, 16))
    devices = [ddp.device] if ddp.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.run.seed + 7919)
        scratch = MetaArch(cfg, ddp.device)
        counts = []
        for stage in [*stages, none_stage(cfg)]:
            dataset = AugmentedDataset(train_set, make_augment(cfg, stage))
            collate = MultiCropCollate(
                patch_size, cfg.loss.mask_probability, (cfg.loss.mask_ratio_min, cfg.loss.mask_ratio_max)
            )
            batch = collate([dataset[(i % len(train_set), cfg.run.seed + i, cfg.run.seed)] for i in range(n)])
            flops = costs_mod.count_flops(lambda m=scratch, b=batch: m.forward_backward(b, cfg.loss.teacher_temp))
            scratch.zero_grad(set_to_none=True)
            counts.append(flops // n)
        del scratch
    return counts[:-1], counts[-1]
