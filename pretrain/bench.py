"""``bench-train``: how fast one DINOv2 training step runs, with and without its data pipeline.

For each curriculum stage's crop sizes (stage 1: the full sizes times ``stage1_scale``, rounded to
the patch; stage 2: the full sizes, with noise patching) and each variant:

- ``fast``: what ``fdbench pretrain`` runs by default on CUDA: compiled backbones
  (:func:`pretrain.fast_step.accelerate_meta_arch`), fed by the on-device
  augmentation pipeline (``--data-pipeline gpu``) or by the CPU one;
- ``reference`` (``--reference``): the plain eager step fed by the CPU pipeline
  (:class:`pretrain.augment.MultiCropAugmentation` in DataLoader workers).

Both are the engine's own code, not copies: its model (:class:`pretrain.meta_arch.MetaArch`), optimiser
and iteration (:func:`pretrain.step.train_step`: forward/backward, clipping, AdamW, EMA) at constant
schedule values, and its data pipelines (:class:`pretrain.pipeline.StageFeed`, the engine's data
order). Measured:

- model-only img/s: the step on synthetic tensors already on the device (``B * steps / time``);
- end-to-end img/s: the step fed by the chosen pipeline from real images (decode and augmentation
  included; ``e2e_vs_model`` = end-to-end / model-only);
- FLOPs per step (``torch.utils.flop_counter``, forward + backward, counted once on the eager step),
  achieved TFLOP/s = FLOPs / model-only step time, MFU = achieved / the device's dense bf16 peak
  (:data:`PEAK_BF16_TFLOPS`; blank for unknown devices and CPUs);
- peak memory: the CUDA allocator's peak of the cell, or on CPU the process's resident set size
  after the cell's steps (process-wide and never shrinking much: compare options in separate runs,
  e.g. with and without ``--activation-checkpointing``).

Timings synchronise the device once before and once after the timed steps, never inside them.
The configuration lives in :mod:`pretrain.bench_config`, the outputs in :mod:`pretrain.bench_results`;
both are re-exported here.
"""

from __future__ import annotations

import gc
import math
import os
import time
from typing import Callable, Iterator

import torch

from fdbench.data import open_dataset
from fdbench.device import resolve_device
from fdbench.errors import FdbenchError
from pretrain.batch import CropBatch
from pretrain.bench_config import (
    PEAK_BF16_TFLOPS,
    RECIPE_SHORTHANDS,
    BenchConfig,
    bench_recipe,
    bench_stages,
    peak_tflops,
    validate_bench,
)
from pretrain.bench_results import TABLE_COLUMNS, format_table, summarise, write_results
from pretrain.costs import count_flops, rss_bytes
from pretrain.fast_step import accelerate_meta_arch
from pretrain.masking import make_masks, masked_token_indices
from pretrain.meta_arch import MetaArch
from pretrain.pipeline import StageFeed, resolve_pipeline
from pretrain.sharding import checkpoint_blocks
from pretrain.stages import StagePlan
from pretrain.step import build_optimizer, train_step

__all__ = [
    "PEAK_BF16_TFLOPS",
    "RECIPE_SHORTHANDS",
    "TABLE_COLUMNS",
    "BenchConfig",
    "TrainStep",
    "bench_recipe",
    "bench_stages",
    "format_table",
    "peak_tflops",
    "run_bench",
    "summarise",
    "synthetic_batch",
    "write_results",
]


# ---------------------------------------------------------------------- the step
class TrainStep:
    """The engine's model, optimiser and :func:`pretrain.step.train_step` at constant schedule values.

    ``fast``: :meth:`accelerate` applies what the engine applies (chunked losses, compiled backbones if
    ``compile``), after the FLOPs were counted on the eager step. Nothing is read back to the host.
    """

    LR, WD, TEACHER_TEMP, MOMENTUM = 1e-4, 0.04, 0.07, 0.996

    def __init__(self, cfg: BenchConfig, device: torch.device, fast: bool, compile: bool):
        self.pcfg = cfg.recipe
        self.meta = MetaArch(self.pcfg, device)
        if self.pcfg.run.activation_checkpointing:  # as the engine does (pretrain.sharding)
            checkpoint_blocks(self.meta.student.backbone)
        self.optimizer = build_optimizer(self.meta, self.pcfg)
        self.teacher_temp = self.TEACHER_TEMP
        self.fast, self.compile = fast, compile

    def accelerate(self) -> None:
        if self.fast:
            accelerate_meta_arch(self.meta, compile=self.compile)

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        return train_step(
            self.meta,
            self.optimizer,
            batch,
            lr=self.LR,
            wd=self.WD,
            freeze_last_layer=False,
            teacher_temp=self.TEACHER_TEMP,
            momentum=self.MOMENTUM,
            clip_grad=self.pcfg.optim.clip_grad,
        )["loss"]


def synthetic_batch(cfg: BenchConfig, stage: StagePlan, device: torch.device, seed: int = 0) -> CropBatch:
    """Random crops already on the device, with real iBOT masks: the model-only input."""
    g = torch.Generator().manual_seed(seed)
    b, s, l = cfg.recipe.run.batch_size, stage.global_size, stage.local_size
    grid = s // cfg.recipe.model.patch_size
    masks = make_masks(2 * b, (grid, grid), 0.5, (0.1, 0.5), g)
    indices, weights = masked_token_indices(masks)  # on the CPU, as the collates do
    return CropBatch(
        global_crops=torch.randn(2 * b, 3, s, s, generator=g).to(device),
        local_crops=torch.randn(stage.n_local * b, 3, l, l, generator=g).to(device) if stage.n_local else None,
        masks=masks.to(device),
        labels=torch.zeros(b, dtype=torch.long, device=device),
        mask_indices=indices.to(device),
        mask_weights=weights.to(device),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[CropBatch], torch.Tensor],
    batches: Iterator[CropBatch],
    steps: int,
    warmup: int,
    device: torch.device,
) -> tuple[float, float]:
    """(seconds per step, last loss) over ``steps`` steps after ``warmup`` untimed ones."""
    loss = None
    for _ in range(warmup):
        loss = step(next(batches))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(next(batches))
    _sync(device)
    elapsed = time.perf_counter() - start
    return elapsed / steps, float(loss) if loss is not None else math.nan


def _repeat(batch: CropBatch) -> Iterator[CropBatch]:
    while True:
        yield batch


# ---------------------------------------------------------------------- data pipelines
def _cycle(make_iter: Callable[[int], Iterator]) -> Iterator:
    epoch = 0
    while True:
        for item in make_iter(epoch):
            yield item
        epoch += 1


def pipeline_batches(
    cfg: BenchConfig, pcfg, stage, device: torch.device, dataset, workers: int, pipeline: str
) -> Iterator[CropBatch]:
    """Training batches on ``device`` from the engine's pipeline for this stage, epoch after epoch."""
    feed = StageFeed(
        pcfg, stage, dataset, pipeline=pipeline, device=device, workers=workers, decode_slack=cfg.decode_slack
    )
    return _cycle(feed.batches)


# ---------------------------------------------------------------------- the benchmark
def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _sig(value: float, digits: int = 4) -> float:
    """Round to significant digits (tiny CPU models have tiny TFLOP counts)."""
    return float(f"{value:.{digits}g}")


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return rss_bytes() / 2**30


def run_bench(
    cfg: BenchConfig, log: Callable[[str], None] | None = None, on_row: Callable[[list[dict]], None] | None = None
) -> list[dict]:
    """Run every (stage, variant) cell; returns one dict per row (see the module docstring).

    Cells run stage by stage (fast, then reference), and ``on_row(rows)`` is called after each, so a
    run cut short by a time limit still leaves the finished cells behind.
    """
    validate_bench(cfg)
    log = log or (lambda message: None)
    r = cfg.recipe
    batch_size, arch, patch = r.run.batch_size, r.model.arch, r.model.patch_size
    device = resolve_device(r.run.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(device_name) if device.type == "cuda" else None
    pipeline = resolve_pipeline(cfg.pipeline, device)
    compile_fast = cfg.compile if cfg.compile is not None else device.type == "cuda"
    workers = r.data.workers if r.data.workers is not None else min(32, max(0, (os.cpu_count() or 1) - 1))
    stages = bench_stages(cfg)
    variants = [("fast", True, compile_fast, pipeline)]
    if cfg.reference:
        variants.append(("reference", False, False, "cpu"))

    dataset = None
    if cfg.end_to_end:
        dataset = open_dataset(r.data.root, "train", None, r.data.class_list, announce=log)
        if len(dataset) < batch_size:
            raise FdbenchError(
                f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}: "
                f"lower --batch-size or use a larger --data"
            )

    rows = []
    for stage in stages:
        for variant, fast, compiled, pipe in variants:
            _free(device)
            torch.manual_seed(r.run.seed)
            log(
                f"bench {variant}: {arch}/{patch} {stage.name} {stage.global_size}/{stage.local_size} "
                f"x{stage.n_local}, batch {batch_size}, compile {'on' if compiled else 'off'}, pipeline {pipe}"
            )
            step = TrainStep(cfg, device, fast=fast, compile=compiled)
            batch = synthetic_batch(cfg, stage, device, r.run.seed)
            flops = count_flops(lambda s=step, b=batch: s.meta.forward_backward(b, s.teacher_temp))
            step.optimizer.zero_grad(set_to_none=True)
            step.accelerate()
            t_model, loss = time_steps(step, _repeat(batch), cfg.steps, cfg.warmup, device)
            t_e2e = None
            if cfg.end_to_end:
                batches = pipeline_batches(cfg, step.pcfg, stage, device, dataset, workers, pipe)
                t_e2e, loss = time_steps(step, batches, cfg.steps, cfg.warmup, device)
            achieved = flops / t_model / 1e12
            rows.append(
                {
                    "variant": variant,
                    "stage": stage.name,
                    "arch": arch,
                    "patch": patch,
                    "global": stage.global_size,
                    "local": stage.local_size,
                    "n_local": stage.n_local,
                    "batch": batch_size,
                    "compile": compiled,
                    "act_ckpt": bool(r.run.activation_checkpointing),
                    "pipeline": pipe,
                    "model_step_ms": round(1e3 * t_model, 3),
                    "model_img_s": round(batch_size / t_model, 1),
                    "e2e_step_ms": round(1e3 * t_e2e, 3) if t_e2e else None,
                    "e2e_img_s": round(batch_size / t_e2e, 1) if t_e2e else None,
                    "e2e_vs_model": round(t_model / t_e2e, 3) if t_e2e else None,
                    "flops_per_step": int(flops),
                    "tflop_per_step": _sig(flops / 1e12),
                    "achieved_tflops": _sig(achieved),
                    "mfu": round(achieved / peak, 4) if peak else None,
                    "peak_mem_gib": round(_peak_gib(device), 3),
                    "loss": round(loss, 4) if math.isfinite(loss) else None,
                    "device": device_name,
                }
            )
            del step, batch
            if on_row is not None:
                on_row(rows)
    _free(device)
    return rows
